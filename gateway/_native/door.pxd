# C-level contract of gateway._native.door (see _native/door.pyx): the fronts ask it in C.

cdef class DoorState:
    cdef public double target_s, tick_s, lag_s, max_lag_s, _overdue
    cdef public object clock
    cdef public bint shut
    cdef public long long refused, asked

    cpdef bint refuse(self) except -1
