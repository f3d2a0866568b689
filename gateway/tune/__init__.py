"""`gateway tune`: which precision and serving configuration give the most throughput at an SLO.

Serving cost is mostly a choice of levers (precision, batch size, threads, instances); each one trades
speed for something, and a faster int8 model is only a saving when its outputs stay close enough to the
original's. So the tool builds the model's variants (``variants``), measures each one's accuracy cost on
a data sample against the fp32 original (``sample``, ``accuracy``) and its throughput under the latency
objective, and reports the two side by side rather than either alone.
"""
