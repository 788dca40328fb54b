"""A server job's state on the local wire: the state records (fedsec.state.records) <-> their protobuf messages.

The server parent and its job process exchange the job's state only as these messages
(fedsec.workflow.link owns the protocol): rounds, refused updates and the participation
record. Reading a message checks its counts against fedsec.limits and its kinds, and
raises WireError naming what is wrong; it never trusts a message to be well formed.
"""

from __future__ import annotations

from fedsec import limits
from fedsec.errors import WireError
from fedsec.state.records import Participation, Refusal, RoundKind, RoundRecord
from fedsec.wire import fedsec_pb2

_MAX_METRICS = 256  # metrics in one round (the state store's bound)


def round_to_wire(record: RoundRecord) -> fedsec_pb2.RoundState:
    return fedsec_pb2.RoundState(
        number=record.number,
        kind=record.kind.value,
        sampled=sorted(record.sampled),
        accepted=sorted(record.accepted),
        refused=dict(record.refused),
        failed=sorted(record.failed),
        metrics={k: float(v) for k, v in record.metrics.items()},
    )


def round_from_wire(msg: fedsec_pb2.RoundState, where: str) -> RoundRecord:
    """The round msg carries; WireError if its kind is unknown or a list is over its limit."""
    try:
        kind = RoundKind(msg.kind)
    except ValueError:
        raise WireError(f"{where}: round {msg.number}: unknown kind {msg.kind[:20]!r}") from None
    lists = {"sampled": msg.sampled, "accepted": msg.accepted, "refused": msg.refused, "failed": msg.failed}
    for name, sites in lists.items():
        if len(sites) > limits.MAX_PARTICIPANTS:
            raise WireError(f"{where}: round {msg.number}: more than {limits.MAX_PARTICIPANTS} sites {name}")
    if len(msg.metrics) > _MAX_METRICS:
        raise WireError(f"{where}: round {msg.number}: more than {_MAX_METRICS} metrics")
    return RoundRecord(
        number=msg.number,
        kind=kind,
        sampled=frozenset(msg.sampled),
        accepted=frozenset(msg.accepted),
        refused=dict(msg.refused),
        failed=frozenset(msg.failed),
        metrics=dict(msg.metrics),
    )


def refusal_to_wire(refusal: Refusal) -> fedsec_pb2.RefusalState:
    return fedsec_pb2.RefusalState(round=refusal.round, site=refusal.site, reason=refusal.reason)


def refusal_from_wire(msg: fedsec_pb2.RefusalState, where: str) -> Refusal:
    """The refusal msg carries; WireError if its site or reason is over its limit."""
    if len(msg.site) > limits.MAX_NAME_LENGTH or len(msg.reason) > limits.MAX_REFUSAL_TEXT:
        raise WireError(f"{where}: a refusal's site or reason is too long")
    return Refusal(msg.round, msg.site, msg.reason)


def participation_to_wire(participation: Participation) -> fedsec_pb2.ParticipationState:
    """The record as a message; each leaving reason cut to its last limits.MAX_LEFT_REASON_TEXT characters, so
    the message of a job of limits.MAX_PARTICIPANTS sites stays under limits.MAX_MESSAGE_BYTES."""
    return fedsec_pb2.ParticipationState(
        fetched=sorted(participation.fetched),
        failures=dict(participation.failures),
        left=[
            fedsec_pb2.SiteLeft(site=s, reason=r[-limits.MAX_LEFT_REASON_TEXT :]) for s, r in participation.left.items()
        ],
    )


def participation_from_wire(msg: fedsec_pb2.ParticipationState, where: str) -> Participation:
    """The participation record msg carries; WireError if a list is over its limit."""
    for name, sites in (("fetched", msg.fetched), ("failures", msg.failures), ("left", msg.left)):
        if len(sites) > limits.MAX_PARTICIPANTS:
            raise WireError(f"{where}: participation: more than {limits.MAX_PARTICIPANTS} sites {name}")
    return Participation(
        frozenset(msg.fetched),
        dict(msg.failures),
        {entry.site: entry.reason for entry in msg.left},
    )
