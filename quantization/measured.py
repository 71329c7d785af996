"""Transformer step-time and weight ratios to full precision, measured on a CPU.

Written by `python app.py bench --quick --update-policy`; policy.py orders the CPU chains from it.
Machine: Intel(R) Xeon(R) Processor, 2 cores, torch 2.13.0+cpu; 2026-11-25.
Slice: 1 double + 2 single blocks at hidden 3072, 256 image + 64 text tokens. Other processes' mean CPU share during the timings: 13%.
"""

CPU_STEP_RATIO = {
    ('torchao', 'int8_dynamic'): 1.201,
    ('bitsandbytes', 'int8'): 1.429,
    ('torchao', 'int8_weight_only'): 2.59,
    ('quanto', 'int4'): 4.176,
    ('bitsandbytes', 'nf4'): 5.441,
    ('quanto', 'int8'): 5.679,
}

CPU_WEIGHT_RATIO = {
    ('bitsandbytes', 'nf4'): 0.258,
    ('quanto', 'int4'): 0.266,
    ('quanto', 'int8'): 0.5,
    ('bitsandbytes', 'int8'): 0.501,
    ('torchao', 'int8_dynamic'): 0.501,
    ('torchao', 'int8_weight_only'): 0.501,
}
