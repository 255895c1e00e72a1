"""aiogram routers, one per concern, composed in the order they must be tried."""

from aiogram import Router

from handlers import (
    broadcasts,
    common,
    confirm,
    deliberation,
    escalation,
    fallback,
    households,
    me_too,
    membership,
    report,
    resident,
    resume,
    staff,
    start,
    stats,
    worker,
)

# resume first: an update fed again after a crash only shows where its person stands (handlers/resume.py);
# common first among the others' message handlers: /cancel must win in every state; then the report wizard, the
# steps residents take most: every router before it costs each of its updates a pass through aiogram's routing
# (bench/intake.py), and none of the later ones' handlers takes a wizard's step, a /report or a category press;
# fallback last among those with messages and buttons: it answers whatever is left; membership handles only the
# bot's own membership changes, which no other router does, so it sits where no message passes it.
ROUTERS = (
    resume.router,
    common.router,
    report.router,
    start.router,
    me_too.router,
    resident.router,
    worker.router,
    escalation.router,
    deliberation.router,
    broadcasts.router,
    staff.router,
    stats.router,
    confirm.router,
    households.router,  # late: its handlers are for its own states and commands, so the wizard's steps skip them
    fallback.router,
    membership.router,
)


def detached_routers() -> tuple[Router, ...]:
    """ROUTERS, free to be included (directly, in the dispatcher: every router level is another pass per update).

    aiogram lets a router have one parent. A process builds one dispatcher, but tests and benchmarks build several
    in one process, so take the routers back from the previous one first."""
    for router in ROUTERS:
        previous = router.parent_router
        if previous is not None:
            previous.sub_routers.remove(router)
            router._parent_router = None
    return ROUTERS
