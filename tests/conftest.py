"""Fixtures for integration tests: a LocalStack on free ports and the controller as a real
subprocess, both stopped by PID at teardown.

Teardown fails the test when the controller logged ``unexpected_error``, printed a
traceback, or did not stop cleanly on SIGTERM. On a failed test the controller's log tail
and HAProxy's server states are printed (pytest shows them with the failure).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from itest_support import (
    ControllerFactory,
    StackFactory,
    controller_for,
    servers_state,
    start_stack,
    wait_lease,
    wait_state,
)

from lab.daemon import ControllerDaemon
from lab.localstack import Layout, LocalStack


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is None or bool(rep.failed)


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[StackFactory]:
    """Factory: ``make_stack(groups=("redis1",), **layout_overrides)`` starts a LocalStack."""
    stacks: list[LocalStack] = []

    def make(groups: tuple[str, ...] = ("redis1",), **overrides: Any) -> LocalStack:
        stack = start_stack(lambda attempt: tmp_path / f"stack{len(stacks)}-{attempt}",
                            lambda: Layout.for_tests(groups=groups, **overrides))
        stacks.append(stack)
        return stack

    yield make
    errors = []
    for stack in reversed(stacks):
        try:
            stack.stop()
        except Exception as e:  # keep stopping the others
            errors.append(repr(e))
    assert not errors, f"stopping the stack failed: {errors}"


@pytest.fixture
def stack(make_stack: StackFactory) -> LocalStack:
    """A one-group stack (redis1a master, redis1b replica, 3 sentinels, HAProxy)."""
    return make_stack()


@pytest.fixture
def make_controller(
    make_stack: StackFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ControllerFactory]:
    """Factory: ``make_controller(stack, *extra_args, wait=True)`` starts the daemon.

    With ``wait`` it returns once HAProxy shows the initial state (each group's ``a`` node
    ready for writes, ``b`` ready for reads). Teardown stops every controller and fails the
    test on ``unexpected_error``, a traceback or an unclean stop.
    """
    procs: list[tuple[LocalStack, ControllerDaemon]] = []

    def make(stack: LocalStack, *extra_args: str, wait: bool = True,
             resync_interval_s: float = 1.0,
             sentinels: Sequence[str] | None = None) -> ControllerDaemon:
        proc = controller_for(
            stack, tmp_path / f"controller{len(procs)}.log", resync_interval_s, extra_args,
            sentinels=sentinels,
        )
        procs.append((stack, proc))
        proc.start()
        if wait:
            wait_state(stack, {g: g + "a" for g in stack.layout.groups}, timeout_s=30,
                       what="initial state applied by the controller")
            wait_lease(stack)
        return proc

    yield make
    problems: list[str] = []
    for _, proc in procs:
        proc.stop()
        problems += proc.problems()
    if _failed(request):
        for _, proc in procs:
            print(f"---- {proc.log_path} (tail)\n{proc.tail(60)}")
        for stack in {s for s, _ in procs}:
            try:
                print(f"---- haproxy state: {servers_state(stack)}")
            except Exception as e:  # the stack may be half down
                print(f"---- haproxy state unavailable: {e!r}")
    if problems:
        pytest.fail("controller log problems:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def controller(stack: LocalStack, make_controller: ControllerFactory) -> ControllerDaemon:
    """The daemon running against ``stack``, initial state applied."""
    return make_controller(stack)
