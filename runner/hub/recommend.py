"""The first model to get: the largest curated model whose recommended variant fits this machine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fitchat.errors import FitchatError
from fitchat.hub.catalog import CatalogEntry, curated, list_variants
from fitchat.hub.client import HubUnreachable, hub_token, require_online

if TYPE_CHECKING:
    from fitchat.model.hardware import HardwareInfo
    from fitchat.model.plan import Plan


@dataclass(frozen=True)
class Recommendation:
    """The catalog model suggested for this machine: its entry and the plan of its recommended variant."""

    entry: CatalogEntry
    plan: Plan


def recommend_first_model(
    hw: HardwareInfo,
    ctx: int,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    candidates: list[CatalogEntry] | None = None,
) -> Recommendation | None:
    """The largest curated model whose recommended variant fits this machine at ``ctx``, or None.

    A model fully on the GPU wins over one partly offloaded (every layer on the GPU with MoE experts in
    RAM before a layer split: :func:`fitchat.model.plan.plan_tier`), which wins over one on the CPU; within
    the best of those the largest model wins. Candidates (``curated()`` by default; gated repos only
    with a token) are planned from their remote headers (:func:`fitchat.hub.remote.fit_remote_repo`) from the
    largest down, stopping at the first that reaches the best verdict this machine allows. A repo
    whose smallest file cannot reach a better verdict than one already found (or cannot fit at all)
    is passed over without reading its headers. Repos missing from the Hub, gated or unreadable are
    skipped; :class:`HubUnreachable` is raised when the Hub cannot be reached (at once when offline).
    """
    from fitchat.hub.remote import fit_remote_repo
    from fitchat.model.plan import plan_tier

    require_online(endpoint)
    entries = curated() if candidates is None else list(candidates)
    entries = sorted((e for e in entries if not e.gated or hub_token(token)), key=lambda e: e.params_b, reverse=True)
    gpu = sum(hw.gpu_budgets())
    memory = hw.ram.available_bytes + (0 if hw.backend == "metal" else gpu)
    full, experts_in_ram, cpu = 4, 3, 1  # plan_tier's tiers
    best_possible = full if gpu else cpu
    found: dict[int, Recommendation] = {}
    for entry in entries:
        try:
            variants = list_variants(entry.repo, endpoint=endpoint, token=token)
        except HubUnreachable:
            raise
        except FitchatError:
            continue
        smallest = min(v.size_bytes for v in variants)
        if smallest > memory:
            continue  # its weights alone exceed the machine
        # The best it could do (a model too big for the GPU might be MoE, whose experts can stay in RAM).
        reach = full if gpu and smallest <= gpu else (experts_in_ram if gpu else cpu)
        if any(tier >= reach for tier in found):
            continue  # a larger model already does as well as this one could
        try:
            plans = fit_remote_repo(entry.repo, hw, ctx, endpoint=endpoint, token=token)
        except HubUnreachable:
            raise
        except FitchatError:
            continue
        plan = next(p for p in plans if p.recommended)
        if plan.verdict == "too_big":
            continue
        found.setdefault(plan_tier(plan), Recommendation(entry, plan))
        if plan_tier(plan) == best_possible:
            break
    if not found:
        return None
    return found[max(found)]
