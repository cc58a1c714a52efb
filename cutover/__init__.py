"""The staged cutover: `abacus cutover status|plan|advance|rollback|history`.

The stage lives in the ops keyspace (`cutover.state`), changed only by compare-and-set; the
stages, their gates and steps are data (`cutover.stages`, `cutover.machine`); the steps call
the pipelines' own primitives (legacy's hand-over, the bridge's and the jobs' managers).
"""
