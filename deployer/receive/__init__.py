"""Stage 1, receive: a verified push or pull-request event from a forge's webhook delivery. Knows nothing of Flask."""

from deployer.receive.events import Ignored, PullRequestEvent, PushEvent, parse_delivery
from deployer.receive.forges import Forge, HeaderMap, detect_forge
from deployer.receive.signature import verify_signature

__all__ = [
    "Forge", "HeaderMap", "Ignored", "PullRequestEvent", "PushEvent", "detect_forge", "parse_delivery",
    "verify_signature",
]  # fmt: skip
