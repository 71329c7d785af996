"""Transformer step-time and weight ratios to full precision, measured on a CPU.

Written by `python app.py bench --quick --update-policy`; policy.py orders the CPU chains from it.
Machine: 2-core CPU, torch 2.13.0 (REFERENCE.md figures, until the benchmark rewrites this file).
"""

CPU_STEP_RATIO = {
    ('bitsandbytes', 'nf4'): 1.0,
    ('torchao', 'int8_dynamic'): 1.0,
    ('quanto', 'int4'): 3.4,
    ('quanto', 'int8'): 3.5,
    ('bitsandbytes', 'int8'): 4.3,
    ('torchao', 'int8_weight_only'): 4.9,
}

CPU_WEIGHT_RATIO = {
    ('bitsandbytes', 'nf4'): 0.258,
    ('quanto', 'int4'): 0.266,
    ('quanto', 'int8'): 0.5,
    ('bitsandbytes', 'int8'): 0.501,
}
