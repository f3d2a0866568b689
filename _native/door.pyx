# cython: language_level=3
"""The per-request half of the shedding door (``pipeline.door.Door``) in C.

Every infer request asks the door whether to refuse it, before it is decoded; asked from the
fronts' compiled paths, an interpreted ``refuse`` would be a frame per request. The policy (the
tick, the error, the metrics' reading) stays in ``Door``, which subclasses this.
"""


cdef class DoorState:
    """The door's readings (see ``pipeline.door``): ``shut`` refuses every request until the next
    tick; ``_overdue`` is the clock reading past which a loop pass has outlived the target.
    (Its fields are declared in ``door.pxd``.)"""

    cpdef bint refuse(self) except -1:
        """True: refuse this infer request now (and it is counted). One clock read per request."""
        self.asked += 1
        if not self.shut:
            if self.asked == 1 or self.clock() <= self._overdue:
                return False
            self.shut = True  # this pass has outlived the target: shut until the next tick
        self.refused += 1
        return True
