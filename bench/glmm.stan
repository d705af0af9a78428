// Hierarchical GLM used as the NUTS peer of vbayes::vb() with random effects
// (bench/glmm.R): the same model and priors as vbayes.  family 0 gaussian
// (precision tau ~ gamma), 1 poisson (log link), 2 binomial (logit).
// Factor 1: d1 correlated effects per group, Huang-Wand prior
//   a_k ~ inv_gamma(1/2, 1/A_k^2), Sigma1 ~ inv_wishart(nu + d1 - 1, 2 nu diag(1/a));
// optional factor 2 (has2 = 1): one effect per group, the same prior with d = 1,
//   i.e. s2 ~ inv_gamma(nu2/2, nu2/a2).  Effects are non-centred (b = chol(Sigma) u).
data {
  int<lower=1> N;
  int<lower=0> K;
  matrix[N, K] X;
  int<lower=0, upper=2> family;
  vector[N] y_real;
  int<lower=0> y_int[N];
  int<lower=0> trials[N];
  vector[N] offset;
  vector[K] loc;
  vector<lower=0>[K] scale;
  real<lower=0> tau_a;
  real<lower=0> tau_b;
  int<lower=1> G1;
  int<lower=1> d1;
  int<lower=1, upper=G1> g1[N];
  matrix[N, d1] Z1;
  real<lower=0> nu1;
  vector<lower=0>[d1] A1;
  int<lower=0, upper=1> has2;
  int<lower=1> G2;
  int<lower=1, upper=G2> g2[N];
  real<lower=0> nu2;
  real<lower=0> A2;
}
parameters {
  vector[K] beta;
  matrix[d1, G1] u1;
  cov_matrix[d1] Sigma1;
  vector<lower=0>[d1] a1;
  vector[has2 ? G2 : 0] u2;
  real<lower=0> s2[has2];
  real<lower=0> a2[has2];
  real<lower=0> tau[family == 0 ? 1 : 0];
}
transformed parameters {
  matrix[d1, G1] b1 = cholesky_decompose(Sigma1) * u1;
}
model {
  vector[N] eta = X * beta + offset;
  for (n in 1:N) eta[n] += Z1[n] * col(b1, g1[n]);
  if (has2) for (n in 1:N) eta[n] += sqrt(s2[1]) * u2[g2[n]];
  beta ~ normal(loc, scale);
  to_vector(u1) ~ std_normal();
  a1 ~ inv_gamma(0.5, 1 ./ square(A1));
  Sigma1 ~ inv_wishart(nu1 + d1 - 1, diag_matrix(2 * nu1 ./ a1));
  if (has2) {
    u2 ~ std_normal();
    a2 ~ inv_gamma(0.5, 1 / square(A2));
    s2 ~ inv_gamma(nu2 / 2, nu2 / a2[1]);
  }
  if (family == 0) {
    tau ~ gamma(tau_a, tau_b);
    y_real ~ normal(eta, 1 / sqrt(tau[1]));
  } else if (family == 1) {
    y_int ~ poisson_log(eta);
  } else {
    y_int ~ binomial_logit(trials, eta);
  }
}
