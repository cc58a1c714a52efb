"""What the read API and `abacus counts get` share: a session, the count stores, the stage
followed, the experiment, and how a query is answered from the store the stage designates."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from cutover.state import StageState, StageStore
from serve.experiment import Answer, Experiment
from serve.metrics import Metrics
from serve.queries import Query, answer_of, read, requests_of
from serve.stage import StageFollower, StageView
from settings import Settings
from storage import CounterStore, Prepared, Row, connect, keyspace_of


class Service:
    """Answers queries from the stage's control store; `start()` connects, follows the
    stage and starts the experiment's worker, `stop()` undoes it."""

    def __init__(self, settings: Settings, experiment_share: float | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        share = settings.serve.experiment_share if experiment_share is None else experiment_share
        self.experiment = Experiment(self.read_sync, share, self.metrics)
        self.follower = StageFollower(self._fetch_stage, settings.serve.stage_refresh_s)
        self._session: Any = None
        self._stores: dict[str, CounterStore] = {}
        self._keyspaces: dict[str, str] = {}
        self._started = False
        self._stage_store: StageStore | None = None
        self._snapshots: list[dict[str, Any]] = []  # the last minutes', oldest first
        self._console_lock = threading.Lock()

    # -- life -----------------------------------------------------------------------------

    def connect(self) -> None:
        if self._session is None:
            self._session = connect(self.settings.cassandra)
            self._prepared = Prepared(self._session)
            self._stage_store = StageStore(self._session, self.settings.cassandra)

    def start(self) -> None:
        """Connect, read the stage (fails if the ops keyspace cannot be read), poll it;
        once (the CLI starts it before uvicorn, the app's lifespan again)."""
        if self._started:
            return
        self.connect()
        self.follower.start()
        self.experiment.start()
        self._started = True

    def stop(self) -> None:
        self._started = False
        self.follower.stop()
        self.experiment.stop()
        if self._session is not None:
            self._session.cluster.shutdown()
            self._session = None
            self._stores.clear()

    def snapshot(self) -> dict[str, Any]:
        """The operations document (`serve.console.collect`, with `rates` against the one
        nearest a minute older), collected at most every CACHE_S seconds; the console page
        and `/metrics` read it (blocking: seconds of RabbitMQ, Kafka and Cassandra reads;
        run it in a thread)."""
        from serve import console

        with self._console_lock:
            now = time.time()
            if not self._snapshots or now - self._snapshots[-1]["generated_at"] > console.CACHE_S:
                self.connect()
                doc = console.collect(self.settings, self._session)
                keep = console.RATE_WINDOW_S[1]
                self._snapshots = [d for d in self._snapshots if now - d["generated_at"] <= keep]
                before = min(
                    (d for d in self._snapshots if now - d["generated_at"] >= 5.0),
                    key=lambda d: abs(now - d["generated_at"] - 60.0),
                    default=None,
                )
                doc["rates"] = console.rates(doc, before)
                self._snapshots.append(doc)
                self.metrics.ops.document = doc
            return self._snapshots[-1]

    def console_page(self) -> str:
        """The console page (`serve.console`) of the newest snapshot."""
        from serve import console

        return console.render(self.snapshot())

    def _fetch_stage(self) -> StageState:
        self.connect()
        assert self._stage_store is not None
        state = self._stage_store.get()
        self.metrics.stage_version.set(state.version)
        return state

    def store(self, name: str) -> CounterStore:
        self.connect()
        if name not in self._stores:
            self._stores[name] = CounterStore(self._prepared, self.settings.cassandra, name)
        return self._stores[name]

    # -- answers --------------------------------------------------------------------------

    def read_sync(self, store: str, query: Query) -> Answer:
        return read(self._session, self.store(store), query)

    async def read_async(self, store: str, query: Query) -> Answer:
        requests = requests_of(self.store(store), query)
        if len(requests) == 1:  # a single-partition query (most): no gather, no task
            pages = [await self._execute(*requests[0])]
        else:
            pages = await asyncio.gather(*(self._execute(st, params) for st, params in requests))
        return answer_of(query, (row for page in pages for row in page))

    async def _execute(self, statement: Any, params: tuple[Any, ...]) -> list[Row]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Row]] = loop.create_future()

        def ok(rows: Any) -> None:
            loop.call_soon_threadsafe(_settle, done, list(rows or ()), None)

        def failed(exc: BaseException) -> None:
            loop.call_soon_threadsafe(_settle, done, None, exc)

        self._session.execute_async(statement, params).add_callbacks(ok, failed)
        return await done

    def envelope(self, view: StageView, query: Query, buckets: Answer) -> dict[str, Any]:
        """The answer with what answered it: the stage, the store and its keyspace."""
        self.metrics.reads.labels(view.stage, view.control).inc()
        return {
            "stage": view.stage,
            "version": view.version,
            "store": view.control,
            "keyspace": self._keyspace(view.control),
            "candidate": view.candidate,
            "query": query.to_dict(),
            "buckets": buckets,
        }

    def _keyspace(self, store: str) -> str:
        if store not in self._keyspaces:
            self._keyspaces[store] = keyspace_of(self.settings.cassandra, store)
        return self._keyspaces[store]

    async def answer(self, query: Query) -> dict[str, Any]:
        view = self.follower.view
        buckets = await self.read_async(view.control, query)
        self.experiment.offer(query, view.stage, view.control, view.candidate, buckets)
        return self.envelope(view, query, buckets)

    def answer_sync(self, query: Query) -> dict[str, Any]:
        """One answer (the CLI): the stage read now, no experiment."""
        view = self.follower.refresh()
        return self.envelope(view, query, self.read_sync(view.control, query))


def _settle(
    future: asyncio.Future[list[Row]], rows: list[Row] | None, exc: BaseException | None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(rows or [])
