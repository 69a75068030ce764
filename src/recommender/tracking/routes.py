"""REST for behaviour: events in, sessions merged, users erased."""

from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from recommender.catalog.schemas import ID_PATTERN
from recommender.platform.security import WRITES
from recommender.tracking.schemas import Event, EventsAccepted
from recommender.tracking.service import TrackingService

PathId = Annotated[str, Parameter(pattern=ID_PATTERN)]


class Merged(msgspec.Struct):
    moved: int


class EventController(Controller):
    path = "/api/v1"
    tags = ["tracking"]  # noqa: RUF012 - read by Litestar as a class attribute

    @post(
        "/events",
        status_code=HTTP_202_ACCEPTED,
        summary="Record one event or up to 1,000",
        opt=WRITES,
    )
    async def record_events(
        self,
        data: JSONBody[Event | list[Any]],
        tracking: NamedDependency[TrackingService],
    ) -> EventsAccepted:
        """The shopper's history is updated before the answer; aggregates follow in the
        background. Each event is validated on its own: a bad one does not fail the others."""
        items = data if isinstance(data, list) else [msgspec.to_builtins(data)]
        return await tracking.record(items)

    @post(
        "/sessions/{session_id:str}/merge",
        status_code=HTTP_200_OK,
        summary="Fold an anonymous session into a user",
        opt=WRITES,
    )
    async def merge_session(
        self,
        session_id: PathId,
        user_id: Annotated[str, Parameter(pattern=ID_PATTERN, description="Who signed in.")],
        tracking: NamedDependency[TrackingService],
    ) -> Merged:
        return Merged(moved=await tracking.merge_session(session_id, user_id))

    @delete(
        "/users/{user_id:str}",
        summary="Erase a user's history and what derives only from it",
        opt=WRITES,
    )
    async def erase_user(self, user_id: PathId, tracking: NamedDependency[TrackingService]) -> None:
        await tracking.erase_user(user_id)
