"""The golden reference registered as a backend (runs anywhere torch runs)."""
from impls.golden import mhc_forward, mhc_pre_backward_manual
from impls.registry import Capabilities, check_inputs
from impls.schema import DTYPES, SMALL_ARGS


class GoldenBackend:
    name = "golden"
    # torch's fp32 matmul (TF32 off by default) and deterministic reductions on one device.
    # Accepts everything: any layout, and the small inputs in any dtype (converted to fp32).
    capabilities = Capabilities(deterministic=True, gemm_precision="fp32", has_forward=True,
                                input_dtypes={name: tuple(DTYPES) for name in SMALL_ARGS},
                                notes="plain PyTorch, fp32 math")

    def backward(self, x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma):
        check_inputs(self.capabilities, self.name, x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post,
                     dh_in, dh_post, dh_res, gamma)
        return mhc_pre_backward_manual(x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post,
                                       dh_in, dh_post, dh_res, gamma)

    def forward(self, x, phi, alpha, bias, gamma=None):
        check_inputs(self.capabilities, self.name, x, phi, alpha, bias, gamma)
        return mhc_forward(x, phi, alpha, bias, gamma)


backend = GoldenBackend()
