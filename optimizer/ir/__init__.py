"""The IR: immutable graphs of coarse transformer ops with lazy weight handles."""

from optimizer.ir.graph import (DTYPE_SIZES, FLOAT_DTYPES, Graph, Node, Transform, Value,
                                WeightRef)
from optimizer.ir.printer import format_graph
from optimizer.ir.verify import VerifyError, verify

__all__ = ["DTYPE_SIZES", "FLOAT_DTYPES", "Graph", "Node", "Transform", "Value", "WeightRef",
           "format_graph", "VerifyError", "verify"]
