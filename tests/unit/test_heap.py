import gc
import weakref

from deployments.heap import settle_heap


class _Node:
    pass


def test_settle_heap_freezes_what_lives_and_frees_old_cycles_when_called_again():
    node = _Node()
    node.me = node  # a reference cycle: only the collector frees it
    ref = weakref.ref(node)
    try:
        assert settle_heap() > 0
        del node
        gc.collect()
        assert ref() is not None  # frozen: full collections skip it
        settle_heap()  # unfreezes and collects first
        assert ref() is None
    finally:
        gc.unfreeze()


def test_settle_heap_leaves_new_garbage_to_the_collector():
    try:
        settle_heap()
        node = _Node()
        node.me = node
        ref = weakref.ref(node)
        del node
        gc.collect()
        assert ref() is None
    finally:
        gc.unfreeze()
