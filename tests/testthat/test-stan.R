# vb_stan(): the references are closed forms (Gaussian and Normal-Gamma
# linear regression), the log density written out in R, vb() on the same
# model, and long NUTS runs from the same stanfit.  The one test program
# (helper-stan.R) is compiled once per session.

test_that("without rstan, vb_stan() says how to install it", {
  expect_error(stan_require(FALSE), "install.packages\\(\"rstan\"\\)")
})

test_that("bad objects and programs that do not compile get clear errors", {
  skip_if_not_installed("rstan")
  expect_error(vb_stan(42), "compiled Stan model")
  expect_error(vb_stan("no_such_model.stan"), "does not exist")
  # stanc's own message is shown (no C++ compilation is reached)
  expect_error(vb_stan("parameters { real mu } model { mu ~ normal(0, 1); }"),
               "does not compile.*PARSER EXPECTED")
  expect_error(vb_stan("parameters { int<lower=0> k; } model { }"),
               "no discrete parameters.*marginalise")
  expect_error(vb_stan(stan_test_code, data = 1:3), "named list")
  expect_error(vb_stan(stan_test_code, data = list(1, 2)), "named list")
})

test_that("sampling statements are told apart from full log densities", {
  expect_true(stan_uses_tilde("model { y ~ normal(0, 1); }"))
  expect_false(stan_uses_tilde("model { target += normal_lpdf(y | 0, 1); // not y ~ normal\n }"))
  expect_false(stan_uses_tilde("model { /* y ~ normal */ target += normal_lpdf(y | 0, 1); }"))
})

test_that("a known-variance linear regression: q is the exact posterior, the ELBO the exact evidence", {
  sm <- stan_test_model()
  d <- stan_test_data(est_sigma = 0L)
  set.seed(1)
  fit <- vb_stan(sm, d, control = vb_control(quiet = TRUE))
  expect_s3_class(fit, c("vbstan", "vbdensity", "vb_posterior"), exact = TRUE)
  expect_true(fit$converged)
  X <- d$X; s2 <- d$sigma_known^2
  V <- solve(crossprod(X) / s2 + diag(1 / d$s0^2, 2))
  m <- unname(drop(V %*% crossprod(X, d$y)) / s2)
  dimnames(V) <- NULL
  C <- s2 * diag(d$N) + d$s0^2 * tcrossprod(X)
  logZ <- -0.5 * (d$N * log(2 * pi) + determinant(C)$modulus[[1]] + sum(d$y * solve(C, d$y)))
  expect_equal(names(coef(fit)), c("beta[1]", "beta[2]"))
  # q itself (unconstrained = constrained here), against the closed form
  expect_lt(max(abs(fit$unconstrained$mu - m) / sqrt(diag(V))), 0.02)
  expect_equal(unname(fit$unconstrained$Sigma), V, tolerance = 1e-2)
  # the family contains the posterior: ELBO = log p(y), up to Monte Carlo error
  expect_lt(abs(fit$elbo - logZ), 1e-3 + 4 * fit$mc_se)
  # summaries from draws of q
  expect_equal(unname(coef(fit)), m, tolerance = 0.05 * max(sqrt(diag(V))))
  ci <- confint(fit, level = 0.9)
  expect_equal(unname(ci[, 1]), m + qnorm(0.05) * sqrt(diag(V)), tolerance = 0.02)
})

test_that("Normal-Gamma regression: the posterior and evidence in closed form", {
  sm <- stan_test_model()
  d <- stan_test_data(est_sigma = 1L, ng = 1L)
  set.seed(2)
  fit <- vb_stan(sm, d, control = vb_control(quiet = TRUE))
  X <- d$X; n <- d$N
  L0 <- diag(1 / d$s0^2, 2)
  Ln <- L0 + crossprod(X)
  mn <- drop(solve(Ln, crossprod(X, d$y)))
  an <- d$a0 + n / 2
  bn <- d$b0 + 0.5 * (sum(d$y^2) - sum(mn * (Ln %*% mn)))
  logZ <- -n / 2 * log(2 * pi) + 0.5 * determinant(L0)$modulus[[1]] -
    0.5 * determinant(Ln)$modulus[[1]] + d$a0 * log(d$b0) - an * log(bn) + lgamma(an) - lgamma(d$a0)
  # beta's marginal is a t with 2 an degrees of freedom, scale (bn / an) Ln^-1
  sd_beta <- sqrt(diag(solve(Ln)) * bn / an * (2 * an) / (2 * an - 2))
  # tau = 1 / sigma^2 ~ Gamma(an, bn)
  cf <- coef(fit)
  expect_lt(max(abs(cf[c("beta[1]", "beta[2]")] - mn) / sd_beta), 0.1)
  expect_lt(max(abs(sqrt(diag(vcov(fit)))[c("beta[1]", "beta[2]")] / sd_beta - 1)), 0.1)
  expect_lt(abs(cf[["tau[1]"]] - an / bn) / sqrt(an / bn^2), 0.1)
  # a lower bound, and a close one (q is Gaussian in (beta, log sigma))
  expect_lt(fit$elbo, logZ + 4 * fit$mc_se)
  expect_gt(fit$elbo, logZ - 0.1)
})

test_that("Stan's log density is the model's log p(y, theta) with Jacobians, and its gradient agrees", {
  sm <- stan_test_model()
  d <- stan_test_data(est_sigma = 1L, has_p = 1L)
  sf <- stan_instance(sm, d)
  # the same log density written in R, on (beta, log sigma, logit p)
  lp_r <- function(u) {
    b <- u[1:2]; s <- exp(u[3]); p <- plogis(u[4]); tau <- 1 / s^2
    sum(dnorm(d$y, drop(d$X %*% b), s, log = TRUE)) + sum(dnorm(b, d$m0, d$s0, log = TRUE)) +
      dgamma(tau, d$a0, d$b0, log = TRUE) + log(2) - 3 * log(s) + u[3] +
      dbeta(p, d$a_p, d$b_p, log = TRUE) + sum(dbinom(d$k, d$ntr, p, log = TRUE)) +
      log(p) + log(1 - p)
  }
  set.seed(3)
  ld <- stan_log_density(sf)
  for (i in 1:3) {
    u <- c(rnorm(2), rnorm(1, -0.3, 0.3), rnorm(1, -0.5, 0.5))
    v <- ld(u)
    expect_equal(as.double(v), lp_r(u), tolerance = 1e-10)
    num <- vapply(1:4, function(j) {
      h <- 1e-5; e <- replace(numeric(4), j, h)
      (lp_r(u + e) - lp_r(u - e)) / (2 * h)
    }, 0)
    expect_equal(attr(v, "gradient"), num, tolerance = 1e-6)
  }
  # the fit's own check at its start
  fit <- vb_stan(sm, d, control = vb_control(quiet = TRUE))
  expect_lt(fit$stan$gradient_check$max_rel_error, 1e-6)
  expect_equal(fit$stan$unc_names, c("beta[1]", "beta[2]", "sigma[1]", "p[1]"))
  expect_equal(fit$stan$par_names, c("beta[1]", "beta[2]", "sigma[1]", "p[1]", "tau[1]"))
})

test_that("the same model through vb(method = 'sgvb') gives the same q", {
  sm <- stan_test_model()
  d <- stan_test_data(est_sigma = 1L, ng = 0L)
  set.seed(4)
  fs <- vb_stan(sm, d, control = vb_control(quiet = TRUE))
  df <- data.frame(y = d$y, x = d$X[, 2])
  set.seed(5)
  fv <- vb(y ~ x, data = df, prior = normal(0, d$s0), prior_intercept = normal(0, d$s0),
           prior_precision = gamma_prior(d$a0, d$b0), method = "sgvb",
           control = vb_control(quiet = TRUE))
  # vb() is Gaussian in (beta, log tau), vb_stan() in (beta, log sigma) = A (beta, log tau)
  A <- diag(c(1, 1, -0.5))
  mv <- drop(A %*% fv$sgvb$mu)
  Sv <- A %*% fv$sgvb$Sigma %*% A
  sdv <- sqrt(diag(Sv))
  # two independent stochastic optimisations, each a few hundredths of an sd
  # from the family's optimum: their difference within 0.08 sd
  expect_lt(max(abs(fs$unconstrained$mu - mv) / sdv), 0.08)
  expect_lt(max(abs(sqrt(diag(fs$unconstrained$Sigma)) / sdv - 1)), 0.08)
  expect_lt(max(abs(cov2cor(fs$unconstrained$Sigma) - cov2cor(Sv))), 0.08)
  # the same family on the same density: the same optimal ELBO
  expect_lt(abs(fs$elbo - fv$elbo), 0.03 + 4 * fs$mc_se)
})

test_that("bounded parameters: draws on the constrained scale agree with long NUTS runs", {
  sm <- stan_test_model()
  d <- stan_test_data(est_sigma = 1L, has_p = 1L)
  set.seed(6)
  fit <- vb_stan(sm, d, control = vb_control(quiet = TRUE))
  nuts <- suppressWarnings(rstan::sampling(sm, data = d, chains = 2, iter = 4000, seed = 7,
                                           refresh = 0))
  ref <- as.matrix(nuts)[, fit$stan$par_names]
  dr <- draws(fit, 8000)
  expect_equal(colnames(dr), fit$stan$par_names)
  expect_true(all(dr[, "sigma[1]"] > 0), all(dr[, "p[1]"] > 0 & dr[, "p[1]"] < 1))
  z <- abs(colMeans(dr) - colMeans(ref)) / apply(ref, 2, sd)
  expect_lt(max(z), 0.1)
  expect_lt(max(abs(apply(dr, 2, sd) / apply(ref, 2, sd) - 1)), 0.1)
  # coef() and summary() are on the same scale
  expect_lt(max(abs(coef(fit) - colMeans(ref)) / apply(ref, 2, sd)), 0.1)
  s <- summary(fit)
  expect_output(print(s), "tau\\[1\\]")
  expect_output(print(fit), "full log p\\(y, theta\\)")
})

test_that("as_draws(), summarise_draws() and vb_diagnose() work on the exact Stan density", {
  skip_if_not_installed("posterior")
  sm <- stan_test_model()
  d <- stan_test_data(est_sigma = 1L, has_p = 1L)
  set.seed(8)
  fit <- vb_stan(sm, d, control = vb_control(quiet = TRUE))
  dr <- posterior::as_draws(fit, n = 2000)
  expect_s3_class(dr, "draws_matrix")
  expect_equal(posterior::variables(dr), c(fit$stan$par_names, "log_p__", "log_g__"))
  sm_tab <- posterior::summarise_draws(fit)
  expect_equal(sm_tab$variable[1:5], fit$stan$par_names)
  expect_lt(max(abs(sm_tab$mean[1:5] - coef(fit)) / sqrt(diag(vcov(fit)))), 0.1)
  # log_p__ is Stan's log density at the draw
  sf <- stan_instance(sm, d)
  u <- rstan::unconstrain_pars(sf, list(beta = as.numeric(dr[1, 1:2]), sigma = array(dr[1, 3]),
                                        p = array(dr[1, 4])))
  expect_equal(as.numeric(dr[1, "log_p__"]),
               as.double(rstan::log_prob(sf, u, adjust_transform = TRUE, gradient = FALSE)),
               tolerance = 1e-8)
  dg <- vb_diagnose(fit, S = 2000, K = c(1, 10))
  expect_true(is.finite(dg$khat))
  # the importance-weighted bound tightens the ELBO
  expect_gt(dg$iwae[2], dg$iwae[1] - 3 * dg$iwae_se[1])
  # after a save and load the stanfit's pointer is gone: rebuilt from model and data
  fit2 <- unserialize(serialize(fit, NULL))
  th <- q_sample(fit2, 5)$theta
  expect_equal(log_joint(fit2, th), log_joint(fit, th))
  expect_equal(dim(draws(fit2, 10)), c(10L, 5L))
})

test_that("data that do not match the data block, zero parameters and bad init: clear errors", {
  sm <- stan_test_model()
  d <- stan_test_data()
  expect_error(vb_stan(sm, d[setdiff(names(d), "N")]),
               "do not match the data block.*variable name=N")
  bad <- d; bad$y <- bad$y[-1]
  expect_error(vb_stan(sm, bad), "do not match the data block.*y")
  bad <- d; bad$y[2] <- NA
  expect_error(vb_stan(sm, bad), "do not match the data block.*NA")
  d0 <- stan_test_data(est_sigma = 0L)
  d0$K <- 0L; d0$X <- matrix(0, d0$N, 0); d0$m0 <- numeric(0)
  expect_error(vb_stan(sm, d0), "no parameters")
  expect_error(vb_stan(sm, d, init = list(beta = c(0, 0), sigma = array(-1))),
               "'init' could not be mapped")
  expect_error(vb_stan(sm, d, init = c(1, 2)), "3 finite unconstrained values")
  # the compiled program is cached for the session
  t0 <- proc.time()[["elapsed"]]
  expect_identical(stan_compile(stan_test_code, quiet = TRUE), sm)
  expect_lt(proc.time()[["elapsed"]] - t0, 5)
})

test_that("init as a list of constrained values, and meanfield q", {
  sm <- stan_test_model()
  d <- stan_test_data(est_sigma = 1L)
  set.seed(9)
  fit <- vb_stan(sm, d, approx = "meanfield", init = list(beta = c(0.5, 0), sigma = array(2)),
                 control = vb_control(quiet = TRUE))
  expect_equal(fit$approx, "meanfield")
  S <- fit$unconstrained$Sigma
  expect_equal(S[upper.tri(S)], rep(0, 3))
  expect_true(fit$converged)
})
