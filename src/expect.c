/*
 * expect.c — the Gaussian-family toolkit: f(m, v) = E log p(y | eta) under
 * eta ~ N(m, v) for each observation family, with df/dm and df/dv, the
 * quantities every Gaussian variational engine (GLM CAVI, latent dynamics,
 * hierarchical GLMs) is built on.  Terms free of eta are left to the caller.
 *
 *   gaussian (precision tau, weight w): 1/2 (E log tau - E tau w ((y - m)^2 + v))
 *   poisson  (log link, weight w):      w (y m - exp(m + v/2))       (E e^eta exact)
 *   binomial (logit, y of w trials):    y m - w E softplus(eta)      (Gauss-Hermite)
 *
 * For the binomial, E softplus, E sigmoid and E sigmoid' are taken with a
 * k-node rule (x, wt) for N(0, 1/2) scaled so that the weights sum to one:
 * E g(eta) = sum wt_k g(m + sqrt(2 v) x_k).  df/dv uses Price's identity,
 * d/dv E g = 1/2 E g''.  Cost O(1) (gaussian, poisson), O(k) (binomial).
 */
#include "vbayes.h"

double vb_softplus(double x) {
    return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x));
}

double vb_egauss(double y, double w, double Etau, double Elogtau, double m, double v, double *dm,
                 double *dv) {
    double r = y - m;
    *dm = Etau * w * r;
    *dv = -0.5 * Etau * w;
    return 0.5 * (Elogtau - Etau * w * (r * r + v));
}

double vb_epois(double y, double w, double m, double v, double *dm, double *dv) {
    double lam = exp(m + 0.5 * v);
    *dm = w * (y - lam);
    *dv = -0.5 * w * lam;
    return w * (y * m - lam);
}

double vb_ebinom(double y, double w, double m, double v, int k, const double *x,
                 const double *wt, double *dm, double *dv) {
    double sp = 0, s1 = 0, s2 = 0, sd = sqrt(2.0 * v);
    for (int i = 0; i < k; i++) {
        double e = m + sd * x[i], s = 1.0 / (1.0 + exp(-e));
        sp += wt[i] * vb_softplus(e);
        s1 += wt[i] * s;
        s2 += wt[i] * s * (1.0 - s);
    }
    *dm = y - w * s1;
    *dv = -0.5 * w * s2;
    return y * m - w * sp;
}
