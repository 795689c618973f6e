"""Whether quantize=int8 runs here: ``torch._int_mm`` is exact only where oneDNN has an int8 dot-product
instruction (VNNI, AMX); elsewhere the app refuses int8 and the tests of its accuracy are skipped."""
import pytest

from hpc_fcn.accel.quantize import int8_gemm_is_exact

EXACT_INT8 = int8_gemm_is_exact("cpu")
needs_exact_int8 = pytest.mark.skipif(
    not EXACT_INT8, reason="this CPU's int8 matrix product is not exact (no VNNI/AMX for oneDNN): quantize=int8 is "
                           "refused here (tests/test_accel.py::test_int8_is_refused_where_the_product_is_not_exact)")
