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
# common first among the others' message handlers: /cancel must win in every state (membership has none);
# fallback last: it answers whatever is left.
ROUTERS = (
    resume.router,
    membership.router,
    common.router,
    start.router,
    report.router,
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
)


def build_router() -> Router:
    root = Router(name="root")
    for router in ROUTERS:
        # aiogram lets a router have one parent. A process builds one dispatcher, but tests and benchmarks
        # build several in one process, so take the routers back from the previous root first.
        previous = router.parent_router
        if previous is not None:
            previous.sub_routers.remove(router)
            router._parent_router = None
    root.include_routers(*ROUTERS)
    return root
