"""The region-wise classifier (NoC): its grammar, the heads built from it, their initialisation."""
from nocdet.noc.head import NoCHead, NoCOutput, describe_noc
from nocdet.noc.init import init_finetune, init_gaussian
from nocdet.noc.spec import NoCSpec, parse_noc

__all__ = ["NoCHead", "NoCOutput", "NoCSpec", "describe_noc", "init_finetune", "init_gaussian", "parse_noc"]
