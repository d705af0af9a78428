# The Stan programs of test-stan.R, compiled at most once per R session
# (vb_stan()'s own cache, keyed by the program text, keeps them).  One program
# serves every test so that the suite compiles once (about a minute):
#   y ~ N(X beta, sigma^2), with sigma known (est_sigma = 0: the posterior of
#   beta is exactly Gaussian) or unknown with tau = 1/sigma^2 ~ Gamma(a0, b0)
#   (the density of sigma carries the Jacobian |d tau / d sigma| = 2 sigma^-3);
#   beta ~ N(m0, s0^2) or, with ng = 1, beta | tau ~ N(m0, s0^2 / tau) (the
#   Normal-Gamma conjugate prior); with has_p = 1 a probability p ~ Beta(a_p, b_p)
#   with binomial counts k of ntr trials.  Every term is a full _lpdf, so
#   target() is log p(y, theta) with its constants.
stan_test_code <- "
data {
  int<lower=0> N;
  int<lower=0> K;
  matrix[N, K] X;
  vector[N] y;
  vector[K] m0;
  real<lower=0> s0;
  int<lower=0, upper=1> est_sigma;
  real<lower=0> sigma_known;
  real<lower=0> a0;
  real<lower=0> b0;
  int<lower=0, upper=1> ng;
  int<lower=0, upper=1> has_p;
  int<lower=0> M;
  int<lower=0> k[M];
  int<lower=0> ntr[M];
  real<lower=0> a_p;
  real<lower=0> b_p;
}
parameters {
  vector[K] beta;
  real<lower=0> sigma[est_sigma];
  real<lower=0, upper=1> p[has_p];
}
transformed parameters {
  real<lower=0> tau[est_sigma];
  for (j in 1:est_sigma) tau[j] = inv_square(sigma[j]);
}
model {
  real s = sigma_known;
  real prior_sd = s0;
  if (est_sigma == 1) {
    s = sigma[1];
    target += gamma_lpdf(tau[1] | a0, b0) + log(2) - 3 * log(sigma[1]);
  }
  if (ng == 1) prior_sd = s0 * s;
  target += normal_lpdf(beta | m0, prior_sd);
  target += normal_lpdf(y | X * beta, s);
  if (has_p == 1) {
    target += beta_lpdf(p[1] | a_p, b_p);
    target += binomial_lpmf(k | ntr, p[1]);
  }
}
"

stan_test_model <- function() {
  testthat::skip_if_not_installed("rstan")
  testthat::skip_on_cran()
  # under make sanitize the compiler itself would run with the ASan runtime
  # preloaded; vb_stan() has no C code of its own (its engine is tested elsewhere)
  testthat::skip_if(nzchar(Sys.getenv("VBAYES_SANITIZE")), "no Stan compilation under the sanitizers")
  stan_compile(stan_test_code, quiet = TRUE)
}

# Data for the test program: n observations of y = 1 + 0.5 x + noise.
stan_test_data <- function(n = 40L, est_sigma = 1L, ng = 0L, has_p = 0L, sigma_known = 0.8,
                           s0 = 2, a0 = 2, b0 = 1, seed = 11) {
  set.seed(seed)
  x <- rnorm(n)
  X <- cbind(1, x)
  y <- drop(X %*% c(1, 0.5)) + rnorm(n, sd = 0.8)
  M <- if (has_p == 1L) 3L else 0L
  list(N = n, K = 2L, X = X, y = y, m0 = c(0, 0), s0 = s0, est_sigma = as.integer(est_sigma),
       sigma_known = sigma_known, a0 = a0, b0 = b0, ng = as.integer(ng),
       has_p = as.integer(has_p), M = M, k = if (M) c(7L, 9L, 5L) else integer(0),
       ntr = if (M) c(20L, 20L, 20L) else integer(0), a_p = 1, b_p = 1)
}
