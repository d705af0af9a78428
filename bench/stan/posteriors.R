# Five standard posteriors as Stan programs with their data, for bench/stan.R
# when bench/posteriors/posteriors.R (the vb_density benchmark set) is absent.
# Each element: stan (program text) and stan_data (its data list).
stan_bench_posteriors <- function() {
  out <- list()

  # Eight schools (Rubin 1981), non-centred
  out$eight_schools_noncentered <- list(
    stan = "
data { int<lower=0> J; vector[J] y; vector<lower=0>[J] sigma; }
parameters { real mu; real<lower=0> tau; vector[J] theta_tilde; }
transformed parameters { vector[J] theta = mu + tau * theta_tilde; }
model {
  mu ~ normal(0, 5); tau ~ cauchy(0, 5); theta_tilde ~ normal(0, 1);
  y ~ normal(theta, sigma);
}",
    stan_data = list(J = 8L, y = c(28, 8, -3, 7, -1, 1, 18, 12),
                     sigma = c(15, 10, 16, 11, 9, 11, 10, 18)))

  # Logistic regression: diabetes in Pima women (MASS::Pima.tr), standardised predictors
  if (requireNamespace("MASS", quietly = TRUE)) {
    P <- MASS::Pima.tr
    X <- scale(as.matrix(P[, c("npreg", "glu", "bp", "skin", "bmi", "ped", "age")]))
    out$pima_logistic <- list(
      stan = "
data { int<lower=0> N; int<lower=1> K; matrix[N, K] X; int<lower=0, upper=1> y[N]; }
parameters { real alpha; vector[K] beta; }
model {
  alpha ~ normal(0, 2.5); beta ~ normal(0, 2.5);
  y ~ bernoulli_logit(alpha + X * beta);
}",
      stan_data = list(N = nrow(X), K = ncol(X), X = unname(X), y = as.integer(P$type == "Yes")))
  }

  # Linear regression with unknown noise: mtcars, mpg ~ wt + hp (standardised)
  Xm <- scale(as.matrix(mtcars[, c("wt", "hp")]))
  out$mtcars_linear <- list(
    stan = "
data { int<lower=0> N; int<lower=1> K; matrix[N, K] X; vector[N] y; }
parameters { real alpha; vector[K] beta; real<lower=0> sigma; }
model {
  alpha ~ normal(20, 10); beta ~ normal(0, 10); sigma ~ exponential(0.2);
  y ~ normal(alpha + X * beta, sigma);
}",
    stan_data = list(N = nrow(Xm), K = 2L, X = unname(Xm), y = mtcars$mpg))

  # Varying intercepts: lme4::sleepstudy, reaction ~ days + (1 | subject), non-centred
  if (requireNamespace("lme4", quietly = TRUE)) {
    s <- lme4::sleepstudy
    out$sleep_varying_intercepts <- list(
      stan = "
data { int<lower=0> N; int<lower=1> J; int<lower=1, upper=J> g[N]; vector[N] x; vector[N] y; }
parameters { real mu; real b; real<lower=0> tau; real<lower=0> sigma; vector[J] z; }
transformed parameters { vector[J] a = mu + tau * z; }
model {
  mu ~ normal(250, 100); b ~ normal(0, 50); tau ~ normal(0, 50); sigma ~ normal(0, 50);
  z ~ normal(0, 1);
  y ~ normal(a[g] + b * x, sigma);
}",
      stan_data = list(N = nrow(s), J = nlevels(s$Subject), g = as.integer(s$Subject),
                       x = s$Days, y = s$Reaction))
  }

  # AR(2) with unknown noise: the level of Lake Huron, 1875-1972 (centred)
  yl <- as.numeric(LakeHuron) - mean(LakeHuron)
  out$lakehuron_ar2 <- list(
    stan = "
data { int<lower=3> T; vector[T] y; }
parameters { real alpha; real<lower=-1, upper=1> phi1; real<lower=-1, upper=1> phi2; real<lower=0> sigma; }
model {
  alpha ~ normal(0, 2); phi1 ~ normal(0, 1); phi2 ~ normal(0, 1); sigma ~ normal(0, 2);
  y[3:T] ~ normal(alpha + phi1 * y[2:(T - 1)] + phi2 * y[1:(T - 2)], sigma);
}",
    stan_data = list(T = length(yl), y = yl))
  out
}
