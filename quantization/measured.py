"""Transformer step-time ratios to full precision per class of CPU (policy.cpu_class), and weight ratios.

Written by `python app.py bench --quick --update-policy` on each class of CPU; policy.py orders the CPU
chains from the table of the CPU it runs on.
"""

CPU_STEP_RATIO = {
    'emulated-bf16': {
        ('quanto', 'int8'): 0.346,
        ('bitsandbytes', 'int8'): 0.346,
        ('quanto', 'int4'): 0.38,
        ('torchao', 'int8_weight_only'): 1.05,
        ('bitsandbytes', 'nf4'): 1.129,
        ('torchao', 'int8_dynamic'): 4.649,
    },
    'native-bf16': {
        ('torchao', 'int8_dynamic'): 1.201,
        ('bitsandbytes', 'int8'): 1.429,
        ('torchao', 'int8_weight_only'): 2.59,
        ('quanto', 'int4'): 4.176,
        ('bitsandbytes', 'nf4'): 5.441,
        ('quanto', 'int8'): 5.679,
    },
}

CPU_WEIGHT_RATIO = {
    ('bitsandbytes', 'nf4'): 0.258,
    ('quanto', 'int4'): 0.266,
    ('quanto', 'int8'): 0.5,
    ('bitsandbytes', 'int8'): 0.501,
    ('torchao', 'int8_dynamic'): 0.501,
    ('torchao', 'int8_weight_only'): 0.501,
}

CPU_MACHINES = {
    'emulated-bf16': 'AMD EPYC, 2 cores, torch 2.13.0+cpu, 2026-11-25; 1 double + 2 single blocks at hidden 3072, 256 image + 64 text tokens; others used 1% of the CPU',
    'native-bf16': 'Intel(R) Xeon(R) Processor, 2 cores, torch 2.13.0+cpu, 2026-11-25; 1 double + 2 single blocks at hidden 3072, 256 image + 64 text tokens; others used 13% of the CPU',
}
