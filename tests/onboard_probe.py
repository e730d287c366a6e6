"""Two small backends for the onboarding tests: golden's math under narrow declarations (a card
of few cases, so it runs in seconds), and the same with a planted bug in dbias."""
from impls.golden import mhc_pre_backward_manual
from impls.registry import Capabilities, check_inputs


class Narrow:
    name = "narrow_probe"
    capabilities = Capabilities(devices=("cpu",), x_dtypes=("fp32",), n_values=(4,), d_multiple=16,
                                deterministic=True, notes="golden's math, few shapes")

    def backward(self, x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res, gamma):
        check_inputs(self.capabilities, self.name, x)
        return mhc_pre_backward_manual(x, phi, alpha, bias, inv_rms, h_mix, h_pre, h_post, dh_in, dh_post, dh_res,
                                       gamma)


class DbiasTwice(Narrow):
    name = "dbias_twice_probe"

    def backward(self, *args):
        dx, dphi, dalpha, dbias, dgamma = super().backward(*args)
        return dx, dphi, dalpha, 2 * dbias, dgamma


narrow = Narrow()
dbias_twice = DbiasTwice()
