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
 * For the binomial, E softplus, E sigmoid and E sigmoid' (d/dv by Price's
 * identity, d/dv E g = 1/2 E g'') are taken in four regimes of v = var(eta):
 * v <= 0.034 (sd 0.185, where most observations of a real fit are): a moment
 * expansion with a proven remainder below 1e-14 (binom_taylor), one exp and
 * one log per observation; 0.034 < v <= 0.238: the fewest Gauss-Hermite
 * nodes (10 to 24) that meet the same bound; 0.238 < v <= 1: a k-node rule (x, wt) for
 * N(0, 1/2) scaled so that the weights sum to one, E g(eta) = sum wt_k
 * g(m + sqrt(2 v) x_k) (32 nodes: error below 1e-12), one exp and one log
 * per node; v > 1: see the wide-q rule below.  Cost O(1) (gaussian, poisson,
 * narrow binomial), O(k) otherwise.
 */
#include "vbayes.h"

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

/*
 * Wide q (sd > 1): a fixed Gauss-Hermite rule misses the kink of softplus at
 * 0 (32 nodes are 1e-2 off at sd 10 and 10 nats off at sd 2000, where
 * separated data put q).  Split each function into its piecewise-linear part,
 * whose expectation is closed form, and a bump b(x) that decays as e^-|x|:
 *   softplus(x) = max(x, 0) + log1p(e^-|x|),  E max(eta, 0) = m Phi(m/s) + s phi(m/s)
 *   sigmoid(x)  = 1{x > 0} - sign(x) sigmoid(-|x|),  P(eta > 0) = Phi(m/s)
 *   sigmoid'(x) = sigmoid(x) sigmoid(-x)  (a bump already)
 * and integrate the bumps against the N(m, s^2) density in x: Gauss-Legendre
 * panels on [-38, 38] split at the kink (beyond 38, e^-x < 4e-17).  The bump
 * values at the nodes are fixed, so only the density varies.  Relative error
 * below 1e-11 for sd >= 1 against adaptive quadrature.  Cost 2 * 7 * 10
 * exp() per observation, only where sd > 1.
 */
#define XS_PANELS 7
#define XS_NODES 10
#define XS_N (2 * XS_PANELS * XS_NODES)
static const double xs_breaks[XS_PANELS + 1] = {0, 1, 2.5, 5, 9, 15, 24, 38};
static double xs_x[XS_N], xs_w[XS_N], xs_r[XS_N], xs_rho[XS_N], xs_b[XS_N];
static int xs_ready = 0;

/* Gauss-Legendre nodes and weights on [-1, 1] by Newton's method on P_n. */
static void gauss_legendre(int n, double *x, double *w) {
    for (int i = 0; i < n; i++) {
        double z = cos(M_PI * (i + 0.75) / (n + 0.5)), dp = 1;
        for (int it = 0; it < 100; it++) {
            double p0 = 1, p1 = z;
            for (int k = 2; k <= n; k++) {
                double p2 = ((2 * k - 1) * z * p1 - (k - 1) * p0) / k;
                p0 = p1;
                p1 = p2;
            }
            dp = n * (z * p1 - p0) / (z * z - 1);
            double dz = p1 / dp;
            z -= dz;
            if (fabs(dz) < 1e-16) break;
        }
        x[i] = z;
        w[i] = 2.0 / ((1 - z * z) * dp * dp);
    }
}

static void xs_setup(void) {
    double gx[XS_NODES], gw[XS_NODES];
    gauss_legendre(XS_NODES, gx, gw);
    int k = 0;
    for (int side = -1; side <= 1; side += 2)
        for (int p = 0; p < XS_PANELS; p++) {
            double a = xs_breaks[p], b = xs_breaks[p + 1];
            for (int i = 0; i < XS_NODES; i++, k++) {
                double u = 0.5 * (a + b) + 0.5 * (b - a) * gx[i], e = exp(-u);
                xs_x[k] = side * u;
                xs_w[k] = 0.5 * (b - a) * gw[i];
                xs_r[k] = log1p(e);
                xs_rho[k] = -side * e / (1 + e);
                xs_b[k] = e / ((1 + e) * (1 + e));
            }
        }
    xs_ready = 1;
}

/*
 * Narrow q (v <= TY_VMAX[TY_KMAX]: most observations of a fit to more than a
 * few hundred rows): the Gaussian moment expansion
 *   E g(m + sqrt(v) Z) = sum_{k=0..K} v^k / (2^k k!) g^(2k)(m) + R_K,
 *   |R_K| <= sup|g^(2K+2)| v^(K+1) / (2^(K+1) (K+1)!)
 * (Taylor's theorem with the Lagrange remainder; odd moments of Z vanish and
 * E Z^(2K+2) / (2K+2)! = 1 / (2^(K+1) (K+1)!)), for g = softplus, sigmoid and
 * sigmoid'.  The Taylor coefficients a_j = sigma^(j)(m) / j! follow from
 * sigma' = sigma (1 - sigma): (j+1) a_{j+1} = a_j - sum_{i=0..j} a_i a_{j-i},
 * started at the tail value a_0 = sigmoid(-|m|) (no cancellation) and
 * reflected by sigma(x) = 1 - sigma(-x).  In these terms
 *   E sigmoid = a_0 + sum_k (2k-1)!! v^k a_2k,  E sigmoid' = sum_k (2k+1)!! v^k a_(2k+1),
 *   E softplus = softplus(m) + sum_k (2k-1)!! v^k a_(2k-1) / (2k).
 * TY_VMAX[K] is the largest v at which the remainder of all three expansions
 * is below 1e-14 (absolute, per trial), from sup|sigma^(j)| measured on a
 * grid of 4e5 points (e.g. sup|sigma^(13)| = 1365, sup|sigma^(17)| = 8.0e5);
 * K is the smallest order that meets it.  Cost: one exp and one log per
 * observation plus O(K^2) flops, against k_nodes exp/log pairs for the
 * Gauss-Hermite rule it replaces.
 */
#define TY_KMAX 8
static const double TY_VMAX[TY_KMAX + 1] = {0,           5.65685e-07, 7.6731e-05,
                                            8.38991e-04, 3.38523e-03, 8.34417e-03,
                                            1.55725e-02, 2.44791e-02, 3.43726e-02};

/*
 * ty_kK(a0, sg, v, &A, &B, &C): the order-K sums above from a_0 = sigmoid(-|m|)
 * (sg = -1 reflects the even coefficients for m > 0), written out for each K
 * (the recurrence unrolled, constants (2k-1)!!/(2k), (2k-1)!!, (2k+1)!! and
 * 1/(j+1) folded): straight-line code is 1.5x faster than the loops, whose
 * short variable trip counts the branch predictor misses.
 */
static void ty_k1(double a0, double sg, double v, double *A, double *B, double *C) {
    double a[4];
    a[0] = a0;
    a[1] = (a[0] - (a[0] * a[0])) * 1.0;
    a[2] = (a[1] - (2 * (a[0] * a[1]))) * 0.5;
    a[3] = (a[2] - (2 * (a[0] * a[2]) + a[1] * a[1])) * 0.3333333333333333;
    *A = 0.5 * v * a[1];
    *B = sg * (1.0 * v * a[2]);
    *C = a[1] + 3.0 * v * a[3];
}

static void ty_k2(double a0, double sg, double v, double *A, double *B, double *C) {
    double a[6];
    a[0] = a0;
    a[1] = (a[0] - (a[0] * a[0])) * 1.0;
    a[2] = (a[1] - (2 * (a[0] * a[1]))) * 0.5;
    a[3] = (a[2] - (2 * (a[0] * a[2]) + a[1] * a[1])) * 0.3333333333333333;
    a[4] = (a[3] - (2 * (a[0] * a[3] + a[1] * a[2]))) * 0.25;
    a[5] = (a[4] - (2 * (a[0] * a[4] + a[1] * a[3]) + a[2] * a[2])) * 0.2;
    *A = 0.5 * v * a[1] + 0.75 * v * v * a[3];
    *B = sg * (1.0 * v * a[2] + 3.0 * v * v * a[4]);
    *C = a[1] + 3.0 * v * a[3] + 15.0 * v * v * a[5];
}

static void ty_k3(double a0, double sg, double v, double *A, double *B, double *C) {
    double a[8];
    a[0] = a0;
    a[1] = (a[0] - (a[0] * a[0])) * 1.0;
    a[2] = (a[1] - (2 * (a[0] * a[1]))) * 0.5;
    a[3] = (a[2] - (2 * (a[0] * a[2]) + a[1] * a[1])) * 0.3333333333333333;
    a[4] = (a[3] - (2 * (a[0] * a[3] + a[1] * a[2]))) * 0.25;
    a[5] = (a[4] - (2 * (a[0] * a[4] + a[1] * a[3]) + a[2] * a[2])) * 0.2;
    a[6] = (a[5] - (2 * (a[0] * a[5] + a[1] * a[4] + a[2] * a[3]))) * 0.16666666666666666;
    a[7] = (a[6] - (2 * (a[0] * a[6] + a[1] * a[5] + a[2] * a[4]) + a[3] * a[3])) *
           0.14285714285714285;
    *A = 0.5 * v * a[1] + 0.75 * v * v * a[3] + 2.5 * v * v * v * a[5];
    *B = sg * (1.0 * v * a[2] + 3.0 * v * v * a[4] + 15.0 * v * v * v * a[6]);
    *C = a[1] + 3.0 * v * a[3] + 15.0 * v * v * a[5] + 105.0 * v * v * v * a[7];
}

static void ty_k4(double a0, double sg, double v, double *A, double *B, double *C) {
    double a[10];
    a[0] = a0;
    a[1] = (a[0] - (a[0] * a[0])) * 1.0;
    a[2] = (a[1] - (2 * (a[0] * a[1]))) * 0.5;
    a[3] = (a[2] - (2 * (a[0] * a[2]) + a[1] * a[1])) * 0.3333333333333333;
    a[4] = (a[3] - (2 * (a[0] * a[3] + a[1] * a[2]))) * 0.25;
    a[5] = (a[4] - (2 * (a[0] * a[4] + a[1] * a[3]) + a[2] * a[2])) * 0.2;
    a[6] = (a[5] - (2 * (a[0] * a[5] + a[1] * a[4] + a[2] * a[3]))) * 0.16666666666666666;
    a[7] = (a[6] - (2 * (a[0] * a[6] + a[1] * a[5] + a[2] * a[4]) + a[3] * a[3])) *
           0.14285714285714285;
    a[8] = (a[7] - (2 * (a[0] * a[7] + a[1] * a[6] + a[2] * a[5] + a[3] * a[4]))) * 0.125;
    a[9] = (a[8] - (2 * (a[0] * a[8] + a[1] * a[7] + a[2] * a[6] + a[3] * a[5]) + a[4] * a[4])) *
           0.1111111111111111;
    *A = 0.5 * v * a[1] + 0.75 * v * v * a[3] + 2.5 * v * v * v * a[5] +
         13.125 * v * v * v * v * a[7];
    *B = sg * (1.0 * v * a[2] + 3.0 * v * v * a[4] + 15.0 * v * v * v * a[6] +
               105.0 * v * v * v * v * a[8]);
    *C = a[1] + 3.0 * v * a[3] + 15.0 * v * v * a[5] + 105.0 * v * v * v * a[7] +
         945.0 * v * v * v * v * a[9];
}

static void ty_k5(double a0, double sg, double v, double *A, double *B, double *C) {
    double a[12];
    a[0] = a0;
    a[1] = (a[0] - (a[0] * a[0])) * 1.0;
    a[2] = (a[1] - (2 * (a[0] * a[1]))) * 0.5;
    a[3] = (a[2] - (2 * (a[0] * a[2]) + a[1] * a[1])) * 0.3333333333333333;
    a[4] = (a[3] - (2 * (a[0] * a[3] + a[1] * a[2]))) * 0.25;
    a[5] = (a[4] - (2 * (a[0] * a[4] + a[1] * a[3]) + a[2] * a[2])) * 0.2;
    a[6] = (a[5] - (2 * (a[0] * a[5] + a[1] * a[4] + a[2] * a[3]))) * 0.16666666666666666;
    a[7] = (a[6] - (2 * (a[0] * a[6] + a[1] * a[5] + a[2] * a[4]) + a[3] * a[3])) *
           0.14285714285714285;
    a[8] = (a[7] - (2 * (a[0] * a[7] + a[1] * a[6] + a[2] * a[5] + a[3] * a[4]))) * 0.125;
    a[9] = (a[8] - (2 * (a[0] * a[8] + a[1] * a[7] + a[2] * a[6] + a[3] * a[5]) + a[4] * a[4])) *
           0.1111111111111111;
    a[10] =
        (a[9] - (2 * (a[0] * a[9] + a[1] * a[8] + a[2] * a[7] + a[3] * a[6] + a[4] * a[5]))) * 0.1;
    a[11] = (a[10] - (2 * (a[0] * a[10] + a[1] * a[9] + a[2] * a[8] + a[3] * a[7] + a[4] * a[6]) +
                      a[5] * a[5])) *
            0.09090909090909091;
    *A = 0.5 * v * a[1] + 0.75 * v * v * a[3] + 2.5 * v * v * v * a[5] +
         13.125 * v * v * v * v * a[7] + 94.5 * v * v * v * v * v * a[9];
    *B = sg * (1.0 * v * a[2] + 3.0 * v * v * a[4] + 15.0 * v * v * v * a[6] +
               105.0 * v * v * v * v * a[8] + 945.0 * v * v * v * v * v * a[10]);
    *C = a[1] + 3.0 * v * a[3] + 15.0 * v * v * a[5] + 105.0 * v * v * v * a[7] +
         945.0 * v * v * v * v * a[9] + 10395.0 * v * v * v * v * v * a[11];
}

static void ty_k6(double a0, double sg, double v, double *A, double *B, double *C) {
    double a[14];
    a[0] = a0;
    a[1] = (a[0] - (a[0] * a[0])) * 1.0;
    a[2] = (a[1] - (2 * (a[0] * a[1]))) * 0.5;
    a[3] = (a[2] - (2 * (a[0] * a[2]) + a[1] * a[1])) * 0.3333333333333333;
    a[4] = (a[3] - (2 * (a[0] * a[3] + a[1] * a[2]))) * 0.25;
    a[5] = (a[4] - (2 * (a[0] * a[4] + a[1] * a[3]) + a[2] * a[2])) * 0.2;
    a[6] = (a[5] - (2 * (a[0] * a[5] + a[1] * a[4] + a[2] * a[3]))) * 0.16666666666666666;
    a[7] = (a[6] - (2 * (a[0] * a[6] + a[1] * a[5] + a[2] * a[4]) + a[3] * a[3])) *
           0.14285714285714285;
    a[8] = (a[7] - (2 * (a[0] * a[7] + a[1] * a[6] + a[2] * a[5] + a[3] * a[4]))) * 0.125;
    a[9] = (a[8] - (2 * (a[0] * a[8] + a[1] * a[7] + a[2] * a[6] + a[3] * a[5]) + a[4] * a[4])) *
           0.1111111111111111;
    a[10] =
        (a[9] - (2 * (a[0] * a[9] + a[1] * a[8] + a[2] * a[7] + a[3] * a[6] + a[4] * a[5]))) * 0.1;
    a[11] = (a[10] - (2 * (a[0] * a[10] + a[1] * a[9] + a[2] * a[8] + a[3] * a[7] + a[4] * a[6]) +
                      a[5] * a[5])) *
            0.09090909090909091;
    a[12] = (a[11] - (2 * (a[0] * a[11] + a[1] * a[10] + a[2] * a[9] + a[3] * a[8] + a[4] * a[7] +
                           a[5] * a[6]))) *
            0.08333333333333333;
    a[13] = (a[12] - (2 * (a[0] * a[12] + a[1] * a[11] + a[2] * a[10] + a[3] * a[9] + a[4] * a[8] +
                           a[5] * a[7]) +
                      a[6] * a[6])) *
            0.07692307692307693;
    *A = 0.5 * v * a[1] + 0.75 * v * v * a[3] + 2.5 * v * v * v * a[5] +
         13.125 * v * v * v * v * a[7] + 94.5 * v * v * v * v * v * a[9] +
         866.25 * v * v * v * v * v * v * a[11];
    *B = sg * (1.0 * v * a[2] + 3.0 * v * v * a[4] + 15.0 * v * v * v * a[6] +
               105.0 * v * v * v * v * a[8] + 945.0 * v * v * v * v * v * a[10] +
               10395.0 * v * v * v * v * v * v * a[12]);
    *C = a[1] + 3.0 * v * a[3] + 15.0 * v * v * a[5] + 105.0 * v * v * v * a[7] +
         945.0 * v * v * v * v * a[9] + 10395.0 * v * v * v * v * v * a[11] +
         135135.0 * v * v * v * v * v * v * a[13];
}

static void ty_k7(double a0, double sg, double v, double *A, double *B, double *C) {
    double a[16];
    a[0] = a0;
    a[1] = (a[0] - (a[0] * a[0])) * 1.0;
    a[2] = (a[1] - (2 * (a[0] * a[1]))) * 0.5;
    a[3] = (a[2] - (2 * (a[0] * a[2]) + a[1] * a[1])) * 0.3333333333333333;
    a[4] = (a[3] - (2 * (a[0] * a[3] + a[1] * a[2]))) * 0.25;
    a[5] = (a[4] - (2 * (a[0] * a[4] + a[1] * a[3]) + a[2] * a[2])) * 0.2;
    a[6] = (a[5] - (2 * (a[0] * a[5] + a[1] * a[4] + a[2] * a[3]))) * 0.16666666666666666;
    a[7] = (a[6] - (2 * (a[0] * a[6] + a[1] * a[5] + a[2] * a[4]) + a[3] * a[3])) *
           0.14285714285714285;
    a[8] = (a[7] - (2 * (a[0] * a[7] + a[1] * a[6] + a[2] * a[5] + a[3] * a[4]))) * 0.125;
    a[9] = (a[8] - (2 * (a[0] * a[8] + a[1] * a[7] + a[2] * a[6] + a[3] * a[5]) + a[4] * a[4])) *
           0.1111111111111111;
    a[10] =
        (a[9] - (2 * (a[0] * a[9] + a[1] * a[8] + a[2] * a[7] + a[3] * a[6] + a[4] * a[5]))) * 0.1;
    a[11] = (a[10] - (2 * (a[0] * a[10] + a[1] * a[9] + a[2] * a[8] + a[3] * a[7] + a[4] * a[6]) +
                      a[5] * a[5])) *
            0.09090909090909091;
    a[12] = (a[11] - (2 * (a[0] * a[11] + a[1] * a[10] + a[2] * a[9] + a[3] * a[8] + a[4] * a[7] +
                           a[5] * a[6]))) *
            0.08333333333333333;
    a[13] = (a[12] - (2 * (a[0] * a[12] + a[1] * a[11] + a[2] * a[10] + a[3] * a[9] + a[4] * a[8] +
                           a[5] * a[7]) +
                      a[6] * a[6])) *
            0.07692307692307693;
    a[14] = (a[13] - (2 * (a[0] * a[13] + a[1] * a[12] + a[2] * a[11] + a[3] * a[10] + a[4] * a[9] +
                           a[5] * a[8] + a[6] * a[7]))) *
            0.07142857142857142;
    a[15] = (a[14] - (2 * (a[0] * a[14] + a[1] * a[13] + a[2] * a[12] + a[3] * a[11] +
                           a[4] * a[10] + a[5] * a[9] + a[6] * a[8]) +
                      a[7] * a[7])) *
            0.06666666666666667;
    *A = 0.5 * v * a[1] + 0.75 * v * v * a[3] + 2.5 * v * v * v * a[5] +
         13.125 * v * v * v * v * a[7] + 94.5 * v * v * v * v * v * a[9] +
         866.25 * v * v * v * v * v * v * a[11] + 9652.5 * v * v * v * v * v * v * v * a[13];
    *B = sg *
         (1.0 * v * a[2] + 3.0 * v * v * a[4] + 15.0 * v * v * v * a[6] +
          105.0 * v * v * v * v * a[8] + 945.0 * v * v * v * v * v * a[10] +
          10395.0 * v * v * v * v * v * v * a[12] + 135135.0 * v * v * v * v * v * v * v * a[14]);
    *C = a[1] + 3.0 * v * a[3] + 15.0 * v * v * a[5] + 105.0 * v * v * v * a[7] +
         945.0 * v * v * v * v * a[9] + 10395.0 * v * v * v * v * v * a[11] +
         135135.0 * v * v * v * v * v * v * a[13] + 2027025.0 * v * v * v * v * v * v * v * a[15];
}

static void ty_k8(double a0, double sg, double v, double *A, double *B, double *C) {
    double a[18];
    a[0] = a0;
    a[1] = (a[0] - (a[0] * a[0])) * 1.0;
    a[2] = (a[1] - (2 * (a[0] * a[1]))) * 0.5;
    a[3] = (a[2] - (2 * (a[0] * a[2]) + a[1] * a[1])) * 0.3333333333333333;
    a[4] = (a[3] - (2 * (a[0] * a[3] + a[1] * a[2]))) * 0.25;
    a[5] = (a[4] - (2 * (a[0] * a[4] + a[1] * a[3]) + a[2] * a[2])) * 0.2;
    a[6] = (a[5] - (2 * (a[0] * a[5] + a[1] * a[4] + a[2] * a[3]))) * 0.16666666666666666;
    a[7] = (a[6] - (2 * (a[0] * a[6] + a[1] * a[5] + a[2] * a[4]) + a[3] * a[3])) *
           0.14285714285714285;
    a[8] = (a[7] - (2 * (a[0] * a[7] + a[1] * a[6] + a[2] * a[5] + a[3] * a[4]))) * 0.125;
    a[9] = (a[8] - (2 * (a[0] * a[8] + a[1] * a[7] + a[2] * a[6] + a[3] * a[5]) + a[4] * a[4])) *
           0.1111111111111111;
    a[10] =
        (a[9] - (2 * (a[0] * a[9] + a[1] * a[8] + a[2] * a[7] + a[3] * a[6] + a[4] * a[5]))) * 0.1;
    a[11] = (a[10] - (2 * (a[0] * a[10] + a[1] * a[9] + a[2] * a[8] + a[3] * a[7] + a[4] * a[6]) +
                      a[5] * a[5])) *
            0.09090909090909091;
    a[12] = (a[11] - (2 * (a[0] * a[11] + a[1] * a[10] + a[2] * a[9] + a[3] * a[8] + a[4] * a[7] +
                           a[5] * a[6]))) *
            0.08333333333333333;
    a[13] = (a[12] - (2 * (a[0] * a[12] + a[1] * a[11] + a[2] * a[10] + a[3] * a[9] + a[4] * a[8] +
                           a[5] * a[7]) +
                      a[6] * a[6])) *
            0.07692307692307693;
    a[14] = (a[13] - (2 * (a[0] * a[13] + a[1] * a[12] + a[2] * a[11] + a[3] * a[10] + a[4] * a[9] +
                           a[5] * a[8] + a[6] * a[7]))) *
            0.07142857142857142;
    a[15] = (a[14] - (2 * (a[0] * a[14] + a[1] * a[13] + a[2] * a[12] + a[3] * a[11] +
                           a[4] * a[10] + a[5] * a[9] + a[6] * a[8]) +
                      a[7] * a[7])) *
            0.06666666666666667;
    a[16] = (a[15] - (2 * (a[0] * a[15] + a[1] * a[14] + a[2] * a[13] + a[3] * a[12] +
                           a[4] * a[11] + a[5] * a[10] + a[6] * a[9] + a[7] * a[8]))) *
            0.0625;
    a[17] = (a[16] - (2 * (a[0] * a[16] + a[1] * a[15] + a[2] * a[14] + a[3] * a[13] +
                           a[4] * a[12] + a[5] * a[11] + a[6] * a[10] + a[7] * a[9]) +
                      a[8] * a[8])) *
            0.058823529411764705;
    *A = 0.5 * v * a[1] + 0.75 * v * v * a[3] + 2.5 * v * v * v * a[5] +
         13.125 * v * v * v * v * a[7] + 94.5 * v * v * v * v * v * a[9] +
         866.25 * v * v * v * v * v * v * a[11] + 9652.5 * v * v * v * v * v * v * v * a[13] +
         126689.0625 * v * v * v * v * v * v * v * v * a[15];
    *B = sg *
         (1.0 * v * a[2] + 3.0 * v * v * a[4] + 15.0 * v * v * v * a[6] +
          105.0 * v * v * v * v * a[8] + 945.0 * v * v * v * v * v * a[10] +
          10395.0 * v * v * v * v * v * v * a[12] + 135135.0 * v * v * v * v * v * v * v * a[14] +
          2027025.0 * v * v * v * v * v * v * v * v * a[16]);
    *C = a[1] + 3.0 * v * a[3] + 15.0 * v * v * a[5] + 105.0 * v * v * v * a[7] +
         945.0 * v * v * v * v * a[9] + 10395.0 * v * v * v * v * v * a[11] +
         135135.0 * v * v * v * v * v * v * a[13] + 2027025.0 * v * v * v * v * v * v * v * a[15] +
         34459425.0 * v * v * v * v * v * v * v * v * a[17];
}

/* Moments by the expansion; v <= TY_VMAX[TY_KMAX]. */
static void binom_taylor(double m, double v, double *sp, double *s1, double *s2) {
    double e = exp(-fabs(m)), r = 1.0 / (1.0 + e), a0 = e * r, sg = m > 0 ? -1.0 : 1.0, A, B, C;
    if (v <= TY_VMAX[1])
        ty_k1(a0, sg, v, &A, &B, &C);
    else if (v <= TY_VMAX[2])
        ty_k2(a0, sg, v, &A, &B, &C);
    else if (v <= TY_VMAX[3])
        ty_k3(a0, sg, v, &A, &B, &C);
    else if (v <= TY_VMAX[4])
        ty_k4(a0, sg, v, &A, &B, &C);
    else if (v <= TY_VMAX[5])
        ty_k5(a0, sg, v, &A, &B, &C);
    else if (v <= TY_VMAX[6])
        ty_k6(a0, sg, v, &A, &B, &C);
    else if (v <= TY_VMAX[7])
        ty_k7(a0, sg, v, &A, &B, &C);
    else
        ty_k8(a0, sg, v, &A, &B, &C);
    if (sp) *sp = (m > 0 ? m : 0) + log(1.0 + e) + A; /* log(1 + e): abs. error 2e-16 */
    *s1 = (m > 0 ? r : a0) + B;
    *s2 = C;
}

/*
 * Moderate q (TY_VMAX[TY_KMAX] < v <= 0.238): the fewest Gauss-Hermite nodes
 * whose error bound meets 1e-14.  An n-node rule for E f(Z), Z ~ N(0, 1), is
 * exact to degree 2n - 1 with error n! v^n g^(2n)(xi) / (2n)! for
 * g(m + sqrt(v) Z), so GH_VMAX[i] = (1e-14 (2n)! / (n! M))^(1/n) with M the
 * largest of sup|sigma^(2n-1..2n+1)| (1.1 x the asymptote 2 j! / pi^(j+1),
 * which the measured sups up to j = 27 stay below).  Beyond 0.238 the
 * caller's rule (32 nodes by default; 1e-12 there) is used.  The rules are
 * built once by Golub-Welsch (LAPACK dstev on the Jacobi matrix of N(0, 1/2)).
 */
#define GH_NRULES 5
static const int GH_N[GH_NRULES] = {10, 12, 16, 20, 24};
static const double GH_VMAX[GH_NRULES] = {0.0743514, 0.110179, 0.170843, 0.212299, 0.23787};
static double gh_x[GH_NRULES][24], gh_w[GH_NRULES][24];
static int gh_ready = 0; /* 1 built, -1 LAPACK failed (then the caller's rule is used) */

static void gh_setup(void) {
    gh_ready = 1;
    for (int r = 0; r < GH_NRULES; r++) {
        int n = GH_N[r], info = 0;
        double d[24], e[24], z[24 * 24], work[48];
        for (int i = 0; i < n; i++) {
            d[i] = 0;
            e[i] = i + 1 < n ? sqrt(0.5 * (i + 1)) : 0;
        }
        F77_CALL(dstev)("V", &n, d, e, z, &n, work, &info FCONE);
        if (info != 0) {
            gh_ready = -1;
            return;
        }
        for (int i = 0; i < n; i++) {
            gh_x[r][i] = d[i];
            gh_w[r][i] = z[(size_t)i * n] * z[(size_t)i * n];
        }
    }
}

/* E softplus (when sp != NULL), E sigmoid and E sigmoid' under N(m, v). */
static void binom_moments(double m, double v, int k, const double *x, const double *wt, double *sp,
                          double *s1, double *s2) {
    double a = 0, b = 0, c = 0, sd = sqrt(v);
    if (v <= TY_VMAX[TY_KMAX]) {
        binom_taylor(m, v, sp, s1, s2);
        return;
    }
    if (v <= GH_VMAX[GH_NRULES - 1]) {
        if (!gh_ready) gh_setup();
        if (gh_ready == 1) {
            int r = 0;
            while (v > GH_VMAX[r])
                r++;
            k = GH_N[r];
            x = gh_x[r];
            wt = gh_w[r];
        }
    }
    if (sd <= 1.0) {
        /* one exp (and one log for the value) per node */
        for (int i = 0; i < k; i++) {
            double u = m + M_SQRT2 * sd * x[i], e = exp(-fabs(u)), r = 1.0 / (1.0 + e),
                   s = u > 0 ? r : e * r;
            if (sp) a += wt[i] * (fmax(u, 0) + log(1.0 + e)); /* abs. error 2e-16 */
            b += wt[i] * s;
            c += wt[i] * e * r * r;
        }
    } else {
        if (!xs_ready) xs_setup();
        double z = m / sd, Phi = pnorm(z, 0, 1, 1, 0);
        a = m * Phi + sd * dnorm(z, 0, 1, 0);
        b = Phi;
        for (int i = 0; i < XS_N; i++) {
            double u = (xs_x[i] - m) / sd, dens = xs_w[i] * exp(-0.5 * u * u) * M_1_SQRT_2PI / sd;
            a += xs_r[i] * dens;
            b += xs_rho[i] * dens;
            c += xs_b[i] * dens;
        }
    }
    if (sp) *sp = a;
    *s1 = b;
    *s2 = c;
}

double vb_ebinom(double y, double w, double m, double v, int k, const double *x, const double *wt,
                 double *dm, double *dv) {
    double sp, s1, s2;
    binom_moments(m, v, k, x, wt, &sp, &s1, &s2);
    *dm = y - w * s1;
    *dv = -0.5 * w * s2;
    return y * m - w * sp;
}

double vb_esigmoid(double m, double v, int k, const double *x, const double *wt) {
    double s1, s2;
    binom_moments(m, v, k, x, wt, NULL, &s1, &s2);
    return s1;
}
