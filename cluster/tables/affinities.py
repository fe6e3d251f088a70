"""The affinities table a UserShard holds: the model's 0–1 score per product category and
user, one Float32 column `affinity_<category>` per category of `cluster.vocabulary.CATEGORIES`."""

import pyarrow as pa

from cluster.vocabulary import CATEGORIES

AFFINITY_COLUMNS = tuple(f"affinity_{c}" for c in CATEGORIES)

AFFINITIES = pa.schema(
    [pa.field("user_id", pa.string(), nullable=False)]
    + [pa.field(name, pa.float32()) for name in AFFINITY_COLUMNS]
)
