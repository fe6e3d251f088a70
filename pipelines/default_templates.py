"""The templates Herald ships: what an order update and a price drop say until a shop puts
its own template with the same id (`TemplateCache` lays the shop's over these).

Plain JSON-shaped dicts, not models, so the store's cache (`cluster.state.templates`, a layer
below `pipelines`) can be handed them as data; `pipelines.templates.defaults()` parses them.
English is today's wording (`pipelines.order_updates.TEMPLATES`, `pipelines.price_drops`),
so nothing changes for an English user; German and French address the customer formally,
Spanish with "tú", as shop apps in those markets usually do.
"""

from __future__ import annotations

from typing import Any

from pipelines.order_updates import ORDER_STATUSES, TEMPLATES

LOCALES = ("en", "de", "fr", "es")

# status → locale → (title, body); English comes from order_updates.TEMPLATES.
_ORDER_COPY: dict[str, dict[str, tuple[str, str]]] = {
    "placed": {
        "de": ("Bestellung eingegangen", "Wir haben Ihre Bestellung {order_id} erhalten."),
        "fr": ("Commande reçue", "Nous avons bien reçu votre commande {order_id}."),
        "es": ("Pedido recibido", "Hemos recibido tu pedido {order_id}."),
    },
    "confirmed": {
        "de": ("Bestellung bestätigt", "Ihre Bestellung {order_id} ist bestätigt."),
        "fr": ("Commande confirmée", "Votre commande {order_id} est confirmée."),
        "es": ("Pedido confirmado", "Tu pedido {order_id} está confirmado."),
    },
    "paid": {
        "de": (
            "Zahlung eingegangen",
            "Ihre Zahlung für die Bestellung {order_id} war erfolgreich.",
        ),
        "fr": ("Paiement reçu", "Votre paiement pour la commande {order_id} a bien été accepté."),
        "es": ("Pago recibido", "Hemos recibido el pago de tu pedido {order_id}."),
    },
    "packed": {
        "de": ("Bestellung verpackt", "Ihre Bestellung {order_id} ist verpackt und versandbereit."),
        "fr": ("Commande préparée", "Votre commande {order_id} est emballée et prête à partir."),
        "es": ("Pedido preparado", "Tu pedido {order_id} está empaquetado y listo para salir."),
    },
    "shipped": {
        "de": ("Bestellung versandt", "Ihre Bestellung {order_id} ist unterwegs."),
        "fr": ("Commande expédiée", "Votre commande {order_id} est en route."),
        "es": ("Pedido enviado", "Tu pedido {order_id} está en camino."),
    },
    "out_for_delivery": {
        "de": ("In Zustellung", "Ihre Bestellung {order_id} kommt heute an."),
        "fr": ("En cours de livraison", "Votre commande {order_id} arrive aujourd’hui."),
        "es": ("En reparto", "Tu pedido {order_id} llega hoy."),
    },
    "delivered": {
        "de": ("Bestellung zugestellt", "Ihre Bestellung {order_id} wurde zugestellt."),
        "fr": ("Commande livrée", "Votre commande {order_id} a été livrée."),
        "es": ("Pedido entregado", "Tu pedido {order_id} se ha entregado."),
    },
    "delayed": {
        "de": (
            "Bestellung verzögert",
            "Ihre Bestellung {order_id} verzögert sich. Wir kümmern uns darum.",
        ),
        "fr": (
            "Commande retardée",
            "Votre commande {order_id} a du retard. Nous nous en occupons.",
        ),
        "es": ("Pedido retrasado", "Tu pedido {order_id} se ha retrasado. Ya estamos en ello."),
    },
    "cancelled": {
        "de": ("Bestellung storniert", "Ihre Bestellung {order_id} wurde storniert."),
        "fr": ("Commande annulée", "Votre commande {order_id} a été annulée."),
        "es": ("Pedido cancelado", "Tu pedido {order_id} se ha cancelado."),
    },
    "returned": {
        "de": (
            "Rücksendung erhalten",
            "Ihre Rücksendung zur Bestellung {order_id} ist bei uns eingegangen.",
        ),
        "fr": ("Retour reçu", "Nous avons bien reçu le retour de votre commande {order_id}."),
        "es": ("Devolución recibida", "Hemos recibido la devolución de tu pedido {order_id}."),
    },
    "refunded": {
        "de": (
            "Erstattung veranlasst",
            "Die Erstattung für Ihre Bestellung {order_id} ist unterwegs.",
        ),
        "fr": (
            "Remboursement validé",
            "Le remboursement de votre commande {order_id} est en cours.",
        ),
        "es": ("Reembolso tramitado", "El reembolso de tu pedido {order_id} está en camino."),
    },
}

# The price drop: English is pipelines.price_drops' TITLE and body.
_PRICE_DROP_COPY: dict[str, tuple[str, str]] = {
    "en": ("Price drop", "{title} is now {new_price} {currency} (was {old_price} {currency})."),
    "de": (
        "Preis gesenkt",
        "{title} kostet jetzt {new_price} {currency} (vorher {old_price} {currency}).",
    ),
    "fr": (
        "Prix en baisse",
        "{title} passe à {new_price} {currency} (au lieu de {old_price} {currency}).",
    ),
    "es": (
        "Bajada de precio",
        "{title} ahora cuesta {new_price} {currency} (antes {old_price} {currency}).",
    ),
}


def _order(status: str) -> dict[str, Any]:
    copy = {"en": TEMPLATES[status], **_ORDER_COPY[status]}
    return {
        "template_id": f"order.{status}",
        "category": "order",
        "variables": {"order_id": {"type": "string", "max_length": 128}},
        "locales": {tag: {"title": t, "body": b} for tag, (t, b) in copy.items()},
    }


def _price_drop() -> dict[str, Any]:
    return {
        "template_id": "price_drop",
        "category": "price_alert",
        "variables": {
            "title": {"type": "string", "max_length": 200},  # the product's name
            "new_price": {"type": "money"},
            "old_price": {"type": "money"},
            "currency": {"type": "string", "max_length": 3},  # ISO 4217
        },
        "locales": {tag: {"title": t, "body": b} for tag, (t, b) in _PRICE_DROP_COPY.items()},
    }


# template_id → the template as JSON-shaped data (no version: a default's is 0).
DEFAULTS: dict[str, dict[str, Any]] = {
    **{f"order.{status}": _order(status) for status in ORDER_STATUSES},
    "price_drop": _price_drop(),
}
