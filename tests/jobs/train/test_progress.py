"""The progress display: typed events, each drawn explicitly; an unknown event is an error, not dropped."""

from __future__ import annotations

import io

import pytest

from jobs.train.progress import EpochEnded, EpochStarted, Evaluated, ProgressDisplay, ProgressSink, Resumed, StepDone


class ListQueue:
    def __init__(self) -> None:
        self.items: list = []

    def put_nowait(self, item) -> None:
        self.items.append(item)


def test_each_event_type_prints_its_line_outside_a_terminal():
    out = io.StringIO()
    display = ProgressDisplay(queue=None, out=out, tty=False)
    for event in (Resumed(step=12, epoch=2), EpochStarted(epoch=3, epochs=8, steps=25, done=0),
                  StepDone(step_in_epoch=5), StepDone(step_in_epoch=10, loss=1.5, images_per_s=20.0),
                  EpochEnded(epoch=3, epochs=8, steps=25, loss=1.25, images_per_s=18.0),
                  Evaluated(epoch=3, epochs=8, ap={"easy": 0.5, "medium": 0.4, "hard": 0.3}, seconds=9.0)):
        display.handle(event)
    lines = out.getvalue().splitlines()
    assert lines[0] == "resumed from the checkpoint of step 12 (epoch 2)"
    assert lines[1].startswith("epoch 3/8: 25 steps, 18.0 images/s, loss 1.250, ")
    assert lines[2] == "epoch 3/8 val AP  easy 0.500  medium 0.400  hard 0.300  (9 s)"


def test_an_unknown_event_is_an_error_and_a_misspelt_field_fails_where_the_event_is_made():
    display = ProgressDisplay(queue=None, out=io.StringIO(), tty=False)
    with pytest.raises(TypeError, match="unknown progress event"):
        display.handle(("epoch_end", {"epoch": 1}))  # the old untyped form would have been dropped silently
    with pytest.raises(TypeError):
        EpochEnded(epoch=1, epochs=2, steps=3, loss=0.1, image_per_s=1.0)  # type: ignore[call-arg]


def test_the_sink_sends_events_and_drops_the_display_when_the_queue_fails():
    queue = ListQueue()
    ProgressSink(queue).emit(StepDone(step_in_epoch=1))
    assert queue.items == [StepDone(step_in_epoch=1)]

    class Broken:
        def put_nowait(self, item) -> None:
            raise RuntimeError("queue actor gone")

    sink = ProgressSink(Broken())
    sink.emit(StepDone(step_in_epoch=1))  # a convenience never stops training
    assert sink.queue is None
