import pytest

from atelier.core.models import TRANSITIONS, SandboxState, check_transition
from atelier.errors import InvalidStateTransition

S = SandboxState


def test_every_state_has_a_transition_entry() -> None:
    assert set(TRANSITIONS) == set(SandboxState)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.CREATING, S.RUNNING),
        (S.RUNNING, S.STOPPING),
        (S.STOPPING, S.STOPPED),
        (S.STOPPED, S.STARTING),
        (S.STARTING, S.RUNNING),
        (S.ERROR, S.DELETED),
        (S.RUNNING, S.DELETED),
    ],
)
def test_legal_transitions_pass(current: SandboxState, target: SandboxState) -> None:
    check_transition("sb-1", current, target)


@pytest.mark.parametrize(
    ("current", "target", "verb"),
    [
        (S.RUNNING, S.STARTING, "start"),
        (S.STOPPED, S.STOPPING, "stop"),
        (S.DELETED, S.DELETED, "delete"),
        (S.DELETED, S.STARTING, "start"),
    ],
)
def test_illegal_transitions_raise_409(
    current: SandboxState, target: SandboxState, verb: str
) -> None:
    with pytest.raises(InvalidStateTransition) as info:
        check_transition("sb-1", current, target)
    assert info.value.status == 409
    assert info.value.message == f"cannot {verb} sandbox sb-1: it is {current.value}"
    assert info.value.details == {"state": current.value, "target": target.value}
