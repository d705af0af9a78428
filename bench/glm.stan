// Bayesian GLM used as the MCMC and ADVI peer of vbayes::vb() in bench/.
// family 0: poisson (log link, offset = log exposure); 1: bernoulli (logit).
// Independent priors per coefficient: 0 normal(loc, scale),
// 1 double_exponential(loc, scale) = vbayes::laplace(loc, scale).
// The likelihood is written out rather than with poisson_log_glm(): in the
// Stan 2.21 of Debian's r-cran-rstan, poisson_log_glm() with a vector offset
// left NUTS stuck (Rhat >> 1) on data where this form mixes at once.
data {
  int<lower=1> N;
  int<lower=1> K;
  matrix[N, K] X;
  int<lower=0> y[N];
  vector[N] offset;
  int<lower=0, upper=1> family;
  int<lower=0, upper=1> prior_type[K];
  vector[K] loc;
  vector<lower=0>[K] scale;
}
parameters {
  vector[K] beta;
}
model {
  for (k in 1:K) {
    if (prior_type[k] == 0)
      beta[k] ~ normal(loc[k], scale[k]);
    else
      beta[k] ~ double_exponential(loc[k], scale[k]);
  }
  if (family == 0)
    y ~ poisson_log(offset + X * beta);
  else
    y ~ bernoulli_logit(offset + X * beta);
}
