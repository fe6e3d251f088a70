"""The event router's flows, one concern a module, composed by `actors.router.EventRouter`.

- `delivery`: the one delivery step every lane and flow ends in — record queued, hold the
  quiet-hours ones, send, record outcomes, deactivate dead tokens, fall back to the webhook.
- `orders`: order updates (transactional lane).
- `requested`: the shop's `notification.requested` events (transactional lane), one
  notification per (event, user), from a template or inline content.
- `price_drops`: price-drop fan-out to wishers, with the ranker it scores them by.
- `campaigns`: the campaign runner (planning in the fan-out pool, streaming the batches).
- `housekeeping`: router 0's loops — feedback export, fan-out pool shrink, sender scaling.
- `shards`: calls to the UserShard actors several flows share.

A flow gets the pieces it needs (stores, the delivery step, the shard calls, the router's
counters) from the router; flows never import the router, nor one another except the
delivery step and the shard calls.
"""
