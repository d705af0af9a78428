# The Bayesian ecosystem on vbayes fits: loo, posterior, rstantools, bayesplot,
# emmeans.  References: brute-force leave-one-out refits with exact
# predictive densities (quadrature), stats' densities, predict(), lm() in the
# wide-prior limit, and the rstanarm definition of bayes_R2 written out.

# Gauss-Hermite rule for E g(Z), Z ~ N(0, 1) (Golub-Welsch on the probabilists' Hermite recurrence)
gh_normal <- function(k) {
  J <- matrix(0, k, k)
  J[cbind(1:(k - 1), 2:k)] <- J[cbind(2:k, 1:(k - 1))] <- sqrt(seq_len(k - 1))
  e <- eigen(J, symmetric = TRUE)
  list(x = e$values, w = e$vectors[1, ]^2)
}

wide <- function(...) vb(..., prior = normal(0, 5), prior_intercept = normal(0, 5))

test_that("loo() agrees with brute-force leave-one-out refits (gaussian, exact predictive by quadrature)", {
  skip_if_not_installed("loo")
  set.seed(11)
  n <- 40
  d <- data.frame(x = rnorm(n)); d$y <- 1 + 0.8 * d$x + rnorm(n, sd = 0.7)
  fit <- wide(y ~ x, data = d)
  # p(y_i | y_-i) under the refit's q: y | tau ~ N(m, v + 1/tau), tau ~ Gamma(A, B)
  pred <- function(f, nd) {
    X <- model.matrix(~ x, nd); m <- drop(X %*% coef(f)); v <- drop(X %*% vcov(f) %*% t(X))
    integrate(function(t) dnorm(nd$y, m, sqrt(v + 1 / t)) * dgamma(t, f$tau[1], f$tau[2]),
              0, Inf, rel.tol = 1e-10)$value
  }
  exact <- vapply(seq_len(n), function(i) log(pred(wide(y ~ x, data = d[-i, ]), d[i, ])), 0)
  set.seed(2)
  l <- suppressWarnings(loo(fit, draws = 8000))
  expect_s3_class(l, "psis_loo_ap")
  est <- l$estimates
  # the total within a small fraction of its standard error, and pointwise
  expect_lt(abs(est["elpd_loo", "Estimate"] - sum(exact)), 0.25 * est["elpd_loo", "SE"])
  expect_lt(abs(est["elpd_loo", "Estimate"] - sum(exact)), 0.1)
  expect_lt(max(abs(l$pointwise[, "elpd_loo"] - exact)), 0.1)
  # the same method through loo's own generic
  set.seed(2)
  l2 <- suppressWarnings(loo::loo(fit, draws = 8000))
  expect_equal(l2$estimates, est)
})

test_that("loo() agrees with brute-force leave-one-out refits (poisson, Gauss-Hermite predictive)", {
  skip_if_not_installed("loo")
  set.seed(12)
  n <- 40
  d <- data.frame(x = rnorm(n)); d$y <- rpois(n, exp(0.5 + 0.4 * d$x))
  fit <- wide(y ~ x, data = d, family = poisson())
  z <- gh_normal(40)
  pred <- function(f, nd) {
    X <- model.matrix(~ x, nd); m <- drop(X %*% coef(f)); v <- drop(X %*% vcov(f) %*% t(X))
    sum(z$w * dpois(nd$y, exp(m + sqrt(v) * z$x)))
  }
  exact <- vapply(seq_len(n), function(i)
    log(pred(wide(y ~ x, data = d[-i, ], family = poisson()), d[i, ])), 0)
  set.seed(3)
  l <- suppressWarnings(loo(fit, draws = 8000))
  expect_lt(abs(l$estimates["elpd_loo", "Estimate"] - sum(exact)), 0.1)
  expect_lt(max(abs(l$pointwise[, "elpd_loo"] - exact)), 0.05)
})

test_that("loo() one observation at a time (large problems) gives the matrix answer", {
  skip_if_not_installed("loo")
  set.seed(13)
  d <- data.frame(x = rnorm(60)); d$y <- rpois(60, exp(0.3 * d$x))
  fit <- vb(y ~ x, data = d, family = poisson())
  set.seed(4); a <- suppressWarnings(loo(fit, draws = 2000))
  # 60 x 2000 is small; lower the threshold so that it counts as large
  op <- options(vbayes.loo_matrix_max = 0); on.exit(options(op))
  set.seed(4); b <- suppressWarnings(loo(fit, draws = 2000))
  expect_equal(b$estimates, a$estimates, tolerance = 1e-10)
  expect_equal(b$pointwise, a$pointwise, tolerance = 1e-10, ignore_attr = TRUE)
})

test_that("log_lik() is the pointwise log density of stats' distributions", {
  set.seed(14)
  d <- data.frame(x = rnorm(30), ex = runif(30, 0.5, 2), tr = rep(1:3, 10))
  d$cnt <- rpois(30, d$ex * exp(0.2 + 0.5 * d$x))
  d$s <- rbinom(30, d$tr, plogis(d$x))
  d$y <- d$x + rnorm(30)
  d$w <- c(0, rep(1, 14), rep(2, 15))
  fp <- vb(cnt ~ x, data = d, family = poisson(), exposure = ex)
  fb <- vb(cbind(s, tr - s) ~ x, data = d, family = binomial())
  fg <- vb(y ~ x, data = d, weights = w)
  set.seed(1); ll <- log_lik(fp, draws = 5)
  set.seed(1); dr <- draws(fp, 5)
  eta <- outer(dr[, 1], rep(1, 30)) + outer(dr[, 2], d$x)
  expect_equal(ll, t(t(dpois(matrix(d$cnt, 5, 30, byrow = TRUE), t(t(exp(eta)) * d$ex), log = TRUE))),
               ignore_attr = TRUE, tolerance = 1e-10)
  set.seed(1); ll <- log_lik(fb, draws = 5)
  set.seed(1); dr <- draws(fb, 5)
  pr <- plogis(outer(dr[, 1], rep(1, 30)) + outer(dr[, 2], d$x))
  expect_equal(ll, dbinom(matrix(d$s, 5, 30, byrow = TRUE), matrix(d$tr, 5, 30, byrow = TRUE), pr, log = TRUE),
               ignore_attr = TRUE, tolerance = 1e-10)
  # gaussian: weights scale the precision; the zero-weight row is not an observation
  set.seed(1); ll <- log_lik(fg, draws = 5)
  set.seed(1); dr <- draws(fg, 5)
  keep <- d$w > 0
  mu <- outer(dr[, 1], rep(1, 30)) + outer(dr[, 2], d$x)
  ref <- dnorm(matrix(d$y, 5, 30, byrow = TRUE), mu, outer(dr[, "sigma"], 1 / sqrt(pmax(d$w, 1))), log = TRUE)
  expect_equal(dim(ll), c(5L, 29L))
  expect_equal(ll, ref[, keep], ignore_attr = TRUE, tolerance = 1e-10)
  # held-out data: the response comes from newdata
  nd <- data.frame(x = c(0, 1), y = c(0.5, -0.5))
  set.seed(1); ln <- log_lik(fg, newdata = nd, draws = 5)
  expect_equal(ln, dnorm(matrix(nd$y, 5, 2, byrow = TRUE), outer(dr[, 1], c(1, 1)) + outer(dr[, 2], nd$x),
                         dr[, "sigma"], log = TRUE), ignore_attr = TRUE, tolerance = 1e-10)
  if (requireNamespace("rstantools", quietly = TRUE)) {
    set.seed(1); expect_equal(rstantools::log_lik(fg, draws = 5), ll)
  }
  expect_error(log_lik(fg, newdata = data.frame(x = 1)), "response")
  expect_error(log_lik(fg, draws = 0), "draws")
})

test_that("waic() and loo_compare() work on fits and prefer the true model", {
  skip_if_not_installed("loo")
  set.seed(15)
  d <- data.frame(x = rnorm(80), z = rnorm(80)); d$y <- 1 + d$x + rnorm(80, sd = 0.5)
  f1 <- vb(y ~ x, data = d); f0 <- vb(y ~ z, data = d)
  w <- suppressWarnings(loo::waic(f1, draws = 2000))
  expect_s3_class(w, "waic")
  # WAIC and PSIS-LOO estimate the same elpd; here within a fraction of a nat
  set.seed(5); l <- suppressWarnings(loo(f1, draws = 4000))
  expect_lt(abs(w$estimates["elpd_waic", 1] - l$estimates["elpd_loo", 1]), 1)
  set.seed(5)
  cmp <- suppressWarnings(loo::loo_compare(f1, f0))
  expect_equal(rownames(cmp), c("f1", "f0"))
  expect_lt(cmp["f0", "elpd_diff"], -10)
  cmp2 <- suppressWarnings(loo::loo_compare(loo(f1), loo(f0)))
  expect_equal(cmp2[, "elpd_diff"], cmp[, "elpd_diff"], tolerance = 0.05)
  expect_error(loo::loo_compare(f1, 3), "vbayes fit")
})

test_that("loo(), log_lik() on a posterior without data say why not", {
  skip_if_not_installed("loo")
  set.seed(5)
  dens <- vb_density(function(th) -0.5 * sum(th^2), init = c(a = 1, b = -1), gradient = function(th) -th,
                     control = vb_control(quiet = TRUE, sgvb_maxit = 1000))
  expect_error(loo(dens), "no observations")
  expect_error(log_lik(dens), "no observations")
})

test_that("as_draws round trips: the draws of q in every posterior format", {
  skip_if_not_installed("posterior")
  fit <- vb(mpg ~ wt + hp, data = mtcars)
  set.seed(6); m <- posterior::as_draws_matrix(fit, draws = 300)
  set.seed(6); dr <- draws(fit, 300)
  expect_equal(unclass(m), dr, ignore_attr = TRUE)
  expect_equal(posterior::variables(m), c("(Intercept)", "wt", "hp", "sigma"))
  set.seed(6); df <- posterior::as_draws_df(fit, draws = 300)
  expect_equal(unclass(posterior::as_draws_matrix(df)), unclass(m), ignore_attr = TRUE)
  set.seed(6); a <- posterior::as_draws_array(fit, draws = 300)
  expect_equal(dim(a), c(300L, 1L, 4L))
  expect_equal(unclass(posterior::as_draws_matrix(a)), unclass(m), ignore_attr = TRUE)
  set.seed(6); li <- posterior::as_draws_list(fit, draws = 300)
  expect_equal(li[[1]]$wt, dr[, "wt"])
  set.seed(6); rv <- posterior::as_draws_rvars(fit, draws = 300)
  expect_equal(posterior::draws_of(rv$hp)[, 1], dr[, "hp"], ignore_attr = TRUE)
  # our generic and posterior's give the same draws_df
  set.seed(6); a1 <- as_draws(fit, draws = 50)
  set.seed(6); a2 <- posterior::as_draws(fit, draws = 50)
  expect_s3_class(a1, "draws_df")
  expect_equal(a1, a2)
  # summaries of many draws recover q: means and sds of the coefficients
  set.seed(7)
  s <- posterior::summarise_draws(posterior::as_draws_df(fit, draws = 20000), "mean", "sd")
  expect_equal(as.numeric(s$mean[1:3]), unname(coef(fit)), tolerance = 0.01)
  expect_equal(as.numeric(s$sd[1:3]), unname(sqrt(diag(vcov(fit)))), tolerance = 0.03)
  # other objects go to posterior
  expect_s3_class(as_draws(matrix(1:4, 2, dimnames = list(NULL, c("a", "b")))), "draws")
  if (requireNamespace("loo", quietly = TRUE))
    expect_s3_class(suppressWarnings(loo(-abs(matrix(rnorm(400), 100)))), "psis_loo")
})

test_that("as_draws works for vb_density and vb_lds posteriors", {
  skip_if_not_installed("posterior")
  set.seed(8)
  dens <- vb_density(function(th) -0.5 * sum(th^2), init = c(a = 1, b = -1), gradient = function(th) -th,
                     control = vb_control(quiet = TRUE, sgvb_maxit = 1000))
  expect_equal(posterior::variables(posterior::as_draws_matrix(dens, draws = 10)), c("a", "b"))
  z <- as.numeric(arima.sim(list(ar = 0.9), 30))
  y <- outer(z, c(1, -0.5)) + matrix(rnorm(60, sd = 0.5), 30)
  lds <- suppressWarnings(vb_lds(y, 1, control = vb_control(maxit = 20, quiet = TRUE)))
  dm <- posterior::as_draws_matrix(lds, draws = 2000)
  expect_equal(posterior::variables(dm)[1:2], c("z[1,1,1]", "z[1,2,1]"))
  expect_equal(unname(colMeans(unclass(dm))), unname(lds$posterior[[1]]$mean[, 1]), tolerance = 0.05)
})

test_that("posterior_linpred/epred means and sds agree with predict()", {
  skip_if_not_installed("rstantools")
  set.seed(16)
  d <- data.frame(x = rnorm(50), ex = runif(50, 0.5, 2)); d$y <- rpois(50, d$ex * exp(0.5 + 0.3 * d$x))
  fit <- vb(y ~ x, data = d, family = poisson(), exposure = ex)
  S <- 40000
  set.seed(1); lp <- rstantools::posterior_linpred(fit, draws = S)
  m <- predict(fit, type = "link")
  X <- model.matrix(fit$terms, d)
  v <- rowSums((X %*% vcov(fit)) * X)
  expect_lt(max(abs(colMeans(lp) - m) / sqrt(v / S)), 5)
  expect_equal(apply(lp, 2, sd), sqrt(v), tolerance = 0.03, ignore_attr = TRUE)
  set.seed(1); ep <- rstantools::posterior_epred(fit, draws = S)
  r <- predict(fit, type = "response")
  se <- r * sqrt(expm1(v)) / sqrt(S)
  expect_lt(max(abs(colMeans(ep) - r) / se), 5)
  set.seed(1); expect_equal(rstantools::posterior_linpred(fit, transform = TRUE, draws = S), ep)
  # new data: the exposure comes from newdata, as in predict()
  nd <- data.frame(x = c(-1, 1), ex = c(1, 3))
  set.seed(2); en <- rstantools::posterior_epred(fit, newdata = nd, draws = S)
  expect_equal(colMeans(en), predict(fit, nd, type = "response"), tolerance = 0.01, ignore_attr = TRUE)
  # binomial: the probability
  b <- data.frame(x = rnorm(60)); b$y <- rbinom(60, 1, plogis(b$x))
  fb <- vb(y ~ x, data = b, family = binomial())
  set.seed(3); eb <- rstantools::posterior_epred(fb, draws = S)
  expect_equal(colMeans(eb), predict(fb, type = "response"), tolerance = 0.01, ignore_attr = TRUE)
  expect_error(rstantools::posterior_linpred(fit, transform = NA), "TRUE or FALSE")
  expect_error(rstantools::posterior_epred(fit, newdata = list(x = 1)), "data frame")
})

test_that("posterior_predict() draws from the posterior predictive distribution", {
  skip_if_not_installed("rstantools")
  set.seed(17)
  fit <- vb(mpg ~ wt, data = mtcars)
  S <- 20000
  set.seed(1); pp <- rstantools::posterior_predict(fit, draws = S)
  expect_equal(dim(pp), c(S, 32L))
  expect_equal(colMeans(pp), fitted(fit), tolerance = 0.01, ignore_attr = TRUE)
  # var = var of the mean + E sigma^2 = v + B / (A - 1) for tau ~ Gamma(A, B)
  X <- model.matrix(fit$terms, mtcars)
  v <- rowSums((X %*% vcov(fit)) * X)
  expect_equal(apply(pp, 2, var), v + fit$tau[2] / (fit$tau[1] - 1), tolerance = 0.04, ignore_attr = TRUE)
  set.seed(9); a <- rstantools::posterior_predict(fit, draws = 5)
  b <- rstantools::posterior_predict(fit, draws = 5, seed = 9)
  expect_equal(a, b)
  # binomial with trials: successes out of the fitted trials
  d <- data.frame(x = rnorm(30), n = rep(c(5, 10), 15)); d$s <- rbinom(30, d$n, plogis(d$x))
  fb <- vb(cbind(s, n - s) ~ x, data = d, family = binomial())
  pb <- rstantools::posterior_predict(fb, draws = 4000)
  expect_true(all(pb <= matrix(d$n, 4000, 30, byrow = TRUE)))
  expect_equal(colMeans(pb) / d$n, fitted(fb), tolerance = 0.03, ignore_attr = TRUE)
})

test_that("bayes_R2() is the rstanarm definition computed by hand", {
  skip_if_not_installed("rstantools")
  fit <- vb(mpg ~ wt + hp, data = mtcars)
  set.seed(1); r2 <- rstantools::bayes_R2(fit, draws = 500)
  set.seed(1); dr <- draws(fit, 500)
  X <- model.matrix(fit$terms, mtcars)
  mu <- dr[, 1:3] %*% t(X)
  vm <- apply(mu, 1, var)
  expect_equal(r2, vm / (vm + dr[, "sigma"]^2))
  # binomial with trials: mu on the count scale, residual variance mean(n p (1 - p))
  set.seed(18)
  d <- data.frame(x = rnorm(40), n = rep(c(4, 8), 20)); d$s <- rbinom(40, d$n, plogis(d$x))
  fb <- vb(cbind(s, n - s) ~ x, data = d, family = binomial())
  set.seed(2); r2b <- rstantools::bayes_R2(fb, draws = 300)
  set.seed(2); db <- draws(fb, 300)
  p <- plogis(db %*% t(model.matrix(~ x, d)))
  m <- sweep(p, 2, d$n, `*`)
  vb2 <- apply(m, 1, var)
  expect_equal(r2b, vb2 / (vb2 + rowMeans(m * (1 - p))))
  # poisson: residual variance = the mean (the model variance)
  d$cnt <- rpois(40, exp(1 + 0.5 * d$x))
  fp <- vb(cnt ~ x, data = d, family = poisson())
  set.seed(3); r2p <- rstantools::bayes_R2(fp, draws = 300)
  set.seed(3); mp <- exp(draws(fp, 300) %*% t(model.matrix(~ x, d)))
  expect_equal(r2p, apply(mp, 1, var) / (apply(mp, 1, var) + rowMeans(mp)))
  # the classical limit: lots of data, wide priors -> lm's R^2
  set.seed(19)
  big <- data.frame(x = rnorm(2000)); big$y <- 1 + 0.7 * big$x + rnorm(2000)
  fl <- vb(y ~ x, data = big, prior = normal(0, 100), prior_intercept = normal(0, 100))
  expect_equal(median(rstantools::bayes_R2(fl, draws = 2000)), summary(lm(y ~ x, big))$r.squared,
               tolerance = 0.02)
})

test_that("pp_check() hands y and yrep to bayesplot", {
  skip_if_not_installed("bayesplot")
  fit <- vb(mpg ~ wt, data = mtcars)
  p <- bayesplot::pp_check(fit, seed = 1)
  expect_s3_class(p, "ggplot")
  expect_s3_class(bayesplot::pp_check(fit, "stat", stat = "mean", seed = 1), "ggplot")
  expect_s3_class(bayesplot::pp_check(fit, "intervals", x = "wt", nreps = 100), "ggplot")
  expect_s3_class(bayesplot::pp_check(fit, bayesplot::ppc_hist, nreps = 3), "ggplot")
  expect_error(bayesplot::pp_check(fit, "bogus"), "available_ppc")
  expect_error(bayesplot::pp_check(fit, "intervals", x = "nope"), "not a variable")
  expect_error(bayesplot::pp_check(fit, nreps = 0), "nreps")
})

test_that("emmeans: marginal means are L mu with sd sqrt(L Sigma L'), and match lm in the wide-prior limit", {
  skip_if_not_installed("emmeans")
  d <- transform(mtcars, cyl = factor(cyl))
  fit <- vb(mpg ~ cyl + wt, data = d, prior = normal(0, 1e3), prior_intercept = normal(0, 1e3))
  em <- summary(emmeans::emmeans(fit, "cyl"))
  L <- cbind(1, diag(3)[, -1], mean(d$wt))
  expect_equal(em$emmean, drop(L %*% coef(fit)), tolerance = 1e-10)
  expect_equal(em$SE, sqrt(diag(L %*% vcov(fit) %*% t(L))), tolerance = 1e-10)
  # exact equal-tailed credible intervals of q
  expect_equal(em$asymp.UCL, em$emmean + qnorm(0.975) * em$SE, tolerance = 1e-10)
  el <- summary(emmeans::emmeans(lm(mpg ~ cyl + wt, data = d), "cyl"))
  expect_equal(em$emmean, el$emmean, tolerance = 1e-4)
  # posterior sd vs lm's SE: E[tau] vs 1/s^2, within about 5%
  expect_equal(em$SE, el$SE, tolerance = 0.05)
  # contrasts and the response scale of a logistic model
  ct <- summary(emmeans::contrast(emmeans::emmeans(fit, "cyl"), "pairwise"))
  expect_equal(ct$estimate[1], em$emmean[1] - em$emmean[2], tolerance = 1e-10)
  fb <- vb(am ~ wt, data = d, family = binomial())
  eb <- summary(emmeans::emmeans(fb, "wt", at = list(wt = 3), type = "response"))
  m <- sum(c(1, 3) * coef(fb)); s <- sqrt(drop(t(c(1, 3)) %*% vcov(fb) %*% c(1, 3)))
  expect_equal(eb$prob, plogis(m), tolerance = 1e-10)
  expect_equal(eb$asymp.UCL, plogis(m + qnorm(0.975) * s), tolerance = 1e-10)
  X <- model.matrix(~ wt, d)
  expect_error(suppressMessages(emmeans::emmeans(vb_fit(X, d$mpg), "wt")))
})

test_that("loo() works for SGVB and meanfield fits and agrees with the CAVI fullrank answer", {
  skip_if_not_installed("loo")
  set.seed(20)
  d <- data.frame(x = rnorm(50)); d$y <- 0.5 + d$x + rnorm(50)
  ref <- suppressWarnings(loo(vb(y ~ x, data = d), draws = 4000))$estimates["elpd_loo", 1]
  fs <- vb(y ~ x, data = d, method = "sgvb", control = vb_control(quiet = TRUE))
  fm <- vb(y ~ x, data = d, approx = "meanfield")
  set.seed(21)
  expect_equal(suppressWarnings(loo(fs, draws = 4000))$estimates["elpd_loo", 1], ref, tolerance = 0.01)
  expect_equal(suppressWarnings(loo(fm, draws = 4000))$estimates["elpd_loo", 1], ref, tolerance = 0.01)
})
