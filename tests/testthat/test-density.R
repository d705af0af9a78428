# vb_density() on real posteriors: the start at the mode, bounded parameters
# against closed forms (and an ELBO optimum found by quadrature), the
# "gradient" attribute and the evaluation counts, failed evaluations as
# rejected draws, and honest convergence.

qctl <- vb_control(quiet = TRUE)

# Gaussian target N(m, Sig) with value and gradient in one call
gauss_ld <- function(m, Sig) {
  P <- solve(Sig)
  function(th) {
    g <- -drop(P %*% (th - m))
    structure(0.5 * sum((th - m) * g), gradient = g)
  }
}
# Gauss-Hermite rule for the standard normal (Golub-Welsch): E f(Z) = sum w f(x)
statmod_free_gh <- function(n) {
  i <- seq_len(n - 1)
  J <- matrix(0, n, n)
  J[cbind(i, i + 1)] <- J[cbind(i + 1, i)] <- sqrt(i)
  e <- eigen(J, symmetric = TRUE)
  list(x = e$values, w = e$vectors[1, ]^2)
}
ar_cov <- function(d, rho = 0.8, sc = rep(1, d)) rho^abs(outer(1:d, 1:d, "-")) * outer(sc, sc)

test_that("Gaussian targets far from zeros (mean at 10 sd): means within 0.05 sd, sds within 5%", {
  for (d in c(2L, 10L, 50L)) {
    set.seed(d)
    sc <- exp(seq(-1, 1, length.out = d))
    Sig <- ar_cov(d, 0.8, sc)
    m <- 10 * sc
    fit <- vb_density(gauss_ld(m, Sig), init = rep(0, d), control = qctl)
    expect_true(fit$converged, info = paste("d =", d))
    expect_lt(max(abs(coef(fit) - m) / sc), 0.05)
    expect_lt(max(abs(sqrt(diag(vcov(fit))) / sc - 1)), 0.05)
    # exact log normaliser: log sqrt(det(2 pi Sigma)); the Laplace approximation is exact too
    logZ <- 0.5 * determinant(2 * pi * Sig)$modulus[[1]]
    expect_lt(abs(elbo(fit) - logZ), 0.01 + 4 * fit$mc_se)
    expect_lt(abs(fit$elbo_laplace - logZ), 0.01 + 4 * fit$elbo_laplace_se)
  }
})

test_that("meanfield on a correlated 10-d Gaussian converges to its own optimum within the default cap", {
  set.seed(5)
  d <- 10
  Sig <- ar_cov(d, 0.9)
  m <- rep(10, d)
  fit <- vb_density(gauss_ld(m, Sig), init = rep(0, d), approx = "meanfield", control = qctl)
  expect_true(fit$converged)
  expect_lt(fit$iterations, vb_control()$sgvb_maxit)
  # the mean-field optimum: the means, and variances 1 / (Sigma^-1)_jj
  P <- solve(Sig)
  expect_lt(max(abs(coef(fit) - m) * sqrt(diag(P))), 0.1)
  expect_lt(max(abs(diag(vcov(fit)) * diag(P) - 1)), 0.1)
  # its ELBO: log Z - KL(q* || p), KL = 1/2 (sum log P_jj + log det Sigma)
  logZ <- 0.5 * determinant(2 * pi * Sig)$modulus[[1]]
  kl <- 0.5 * (sum(log(diag(P))) + determinant(Sig)$modulus[[1]])
  expect_lt(abs(elbo(fit) - (logZ - kl)), 0.01 + 4 * fit$mc_se)
})

test_that("a Gamma posterior with lower = 0: the optimal log-normal q in closed form", {
  # target exp(a u - b e^u) on u = log x; the best N(mu, s^2): s^2 = 1/a,
  # mu = log(a/b) - 1/(2a), so E_q x = a/b exactly
  a <- 4; b <- 2
  set.seed(6)
  fit <- vb_density(function(x) structure(dgamma(x, a, b, log = TRUE), gradient = (a - 1) / x - b),
                    init = c(x = 1), lower = 0, control = qctl)
  expect_true(fit$converged)
  u <- fit$unconstrained
  expect_lt(abs(u$mu - (log(a / b) - 1 / (2 * a))) * sqrt(a), 0.05)
  expect_lt(abs(sqrt(u$Sigma[1, 1]) * sqrt(a) - 1), 0.05)
  expect_lt(abs(coef(fit) - a / b), 0.03 * a / b)
  ci <- confint(fit, level = 0.9)
  mu <- log(a / b) - 1 / (2 * a)
  expect_equal(unname(ci[1, ]), exp(mu + qnorm(c(0.05, 0.95)) / sqrt(a)), tolerance = 0.05)
  expect_true(all(draws(fit, 500) > 0))
  # the optimal ELBO: a mu - a + log s + (1 + log 2 pi) / 2 + a log b - lgamma(a)
  el <- a * mu - a - 0.5 * log(a) + 0.5 * (1 + log(2 * pi)) + a * log(b) - lgamma(a)
  expect_lt(abs(elbo(fit) - el), 0.01 + 4 * fit$mc_se)
  # an upper bound: -x ~ Gamma(a, b) with upper = 0 is the mirror image
  set.seed(7)
  fit2 <- vb_density(function(x) dgamma(-x, a, b, log = TRUE), init = -1, upper = 0, control = qctl)
  expect_lt(abs(coef(fit2) + a / b), 0.03 * a / b)
  expect_lt(abs(fit2$unconstrained$mu - mu) * sqrt(a), 0.05)
})

test_that("a Beta posterior with both bounds: the logit-normal ELBO optimum found by quadrature", {
  a <- 3; b <- 7
  # ELBO(mu, s) of u = logit x: E log p(u) + log s, by 60-node Gauss-Hermite
  gh <- statmod_free_gh(60)
  lpu <- function(u) a * stats::plogis(u, log.p = TRUE) + b * stats::plogis(-u, log.p = TRUE)
  negelbo <- function(p) -(sum(gh$w * lpu(p[1] + exp(p[2]) * gh$x)) + p[2])
  ref <- optim(c(0, 0), negelbo, method = "BFGS", control = list(reltol = 1e-14))$par
  set.seed(8)
  fit <- vb_density(function(x) dbeta(x, a, b, log = TRUE), init = c(p = 0.5), lower = 0, upper = 1,
                    control = qctl)
  expect_true(fit$converged)
  expect_lt(abs(fit$unconstrained$mu - ref[1]) / exp(ref[2]), 0.05)
  expect_lt(abs(sqrt(fit$unconstrained$Sigma[1, 1]) / exp(ref[2]) - 1), 0.05)
  # constrained mean of the logit-normal q by quadrature
  m_ref <- sum(gh$w * stats::plogis(ref[1] + exp(ref[2]) * gh$x))
  expect_lt(abs(coef(fit) - m_ref), 0.01)
  expect_true(all(draws(fit, 500) > 0 & draws(fit, 500) < 1))
})

test_that("value and gradient in one call; evaluation counts include numerical gradients", {
  Sig <- ar_cov(3); m <- c(1, 2, 3)
  f <- gauss_ld(m, Sig)
  calls <- 0L
  g <- function(th) { calls <<- calls + 1L; f(th) }
  set.seed(9)
  fit <- vb_density(g, init = rep(0, 3), control = qctl)
  expect_equal(fit$n_eval, calls)
  expect_lt(max(abs(coef(fit) - m)), 0.05)
  # without any gradient: central differences, 2 d evaluations each
  calls <- 0L
  h <- function(th) { calls <<- calls + 1L; as.double(f(th)) }
  set.seed(9)
  fit2 <- vb_density(h, init = rep(0, 3), control = qctl)
  expect_equal(fit2$n_eval, calls)
  expect_gte(fit2$n_eval, 2 * 3 * fit2$n_grad)
  expect_lt(max(abs(coef(fit2) - m)), 0.05)
})

test_that("a density that errors in part of its support: rejected draws, result still right", {
  m <- c(10, 10)
  f <- gauss_ld(m, diag(2))
  bad <- function(th) { if (th[1] < 5) stop("outside the region the model code handles"); f(th) }
  set.seed(10)
  fit <- vb_density(bad, init = c(6, 6), control = qctl, init_method = "given")
  expect_gt(fit$n_rejected, 0)
  expect_true(fit$converged)
  expect_lt(max(abs(coef(fit) - m)), 0.05)
  expect_lt(max(abs(sqrt(diag(vcov(fit))) - 1)), 0.05)
  expect_output(print(fit), "rejected draws")
  # persistent failure: an error quoting the failure and where
  set.seed(11)
  expect_error(vb_density(function(th) if (th[1] > 0.5) stop("no model here") else f(th),
                          init = c(0, 0), control = qctl),
               "in a row were rejected.*no model here.*theta = c\\(")
})

test_that("the mode search's fallback says so and starts at a safe scale", {
  # the numerical gradient at init crosses the edge of the support: no mode search
  f <- function(x) if (x > 3) stop("beyond 3") else dnorm(x, log = TRUE)
  set.seed(12)
  expect_message(fit <- suppressWarnings(vb_density(f, init = 3 - 1e-7, control = qctl)),
                 "mode search failed.*at most 1")
  expect_false(fit$start$laplace)
  expect_true(is.na(fit$elbo_laplace))
  # -x^4 (a flat mode): the optimal Gaussian has E x^4 = 3 s^4, ELBO = -3 s^4 + log s, s^2 = 1/sqrt(12)
  set.seed(13)
  fit <- suppressMessages(vb_density(function(x) -x^4, init = 1, control = qctl))
  expect_true(fit$converged)
  expect_lt(abs(vcov(fit)[1, 1] * sqrt(12) - 1), 0.05)
  # init_method = "given": starts at init, standard deviations at most 1
  set.seed(14)
  fit <- vb_density(gauss_ld(c(50, 50), diag(c(400, 400))), init = c(0, 0), init_method = "given",
                    control = qctl)
  expect_identical(fit$start$method, "given")
  expect_lt(max(abs(coef(fit) - 50) / 20), 0.05)
})

test_that("reproductions: far starts that used to fail", {
  # (1) logistic regression with unscaled covariates from zeros: the curvature at
  # zeros gave a huge starting scale (non-finite draws, or 'converged' with ELBO -Inf)
  pm <- MASS::Pima.tr
  X <- cbind(1, as.matrix(pm[, 1:7]))
  y <- as.integer(pm$type == "Yes")
  ld <- function(b) {
    eta <- drop(X %*% b)
    structure(sum(y * eta - pmax(eta, 0) - log1p(exp(-abs(eta)))) - sum(b^2) / 200,
              gradient = drop(crossprod(X, y - plogis(eta))) - b / 100)
  }
  ref <- glm(type ~ ., data = pm, family = binomial())
  res <- vapply(1:3, function(s) {
    set.seed(s)
    fit <- vb_density(ld, init = rep(0, 8), control = qctl)
    c(fit$converged, is.finite(fit$elbo), max(abs(coef(fit) - coef(ref)) / sqrt(diag(vcov(ref)))))
  }, numeric(3))
  expect_true(all(res[1, ] == 1))
  expect_true(all(res[2, ] == 1))
  # n = 200 with a flat prior: the posterior mean is near the MLE (within 0.3 sd)
  expect_lt(max(res[3, ]), 0.3)
  # (2) a far-off positive scale parameter: log sigma of a normal sample from zeros
  set.seed(13)
  z <- rnorm(50, 100, 20)
  ls <- function(p) {
    mu <- p[1]; s <- p[2]; r <- z - mu
    structure(-50 * log(s) - sum(r^2) / (2 * s^2), gradient = c(sum(r) / s^2, -50 / s + sum(r^2) / s^3))
  }
  fit <- vb_density(ls, init = c(mu = 0, sigma = 1), lower = c(-Inf, 0), control = qctl)
  expect_true(fit$converged)
  expect_lt(abs(coef(fit)[["mu"]] - mean(z)) / (sd(z) / sqrt(50)), 0.1)
  # flat prior on mu and on log sigma... (Jacobian) : sigma^2 | y ~ scaled inv-chi^2(n-1... )
  # E sigma under p(mu, sigma) propto sigma^-n exp(-SS / 2 sigma^2) * sigma (log scale flat is sigma^-1,
  # here the density in sigma is flat, so sigma^2 ~ InvGamma((n - 2) / 2, SS / 2) after integrating mu)
  SS <- sum((z - mean(z))^2); al <- (50 - 2) / 2
  Es <- sqrt(SS / 2) * exp(lgamma(al - 0.5) - lgamma(al))
  expect_lt(abs(coef(fit)[["sigma"]] / Es - 1), 0.02)
})

test_that("vb_diagnose: ESS with k-hat, never 'good' with a tiny ESS, and 'too noisy' with few finite ratios", {
  set.seed(14)
  fit <- vb_density(gauss_ld(c(0, 0), diag(2)), init = c(0, 0), control = qctl)
  dg <- vb_diagnose(fit, S = 2000, K = 1)
  expect_gt(dg$ess, 0.9 * 2000)
  expect_match(dg$khat_label, "good")
  expect_output(print(dg), "Effective sample size")
  # the issue's case: q's mass almost all where the log density is -Inf
  bad <- fit
  bad$target <- function(u) if (u[1] > 2.8) -0.5 * sum(u^2) else -Inf
  dg <- vb_diagnose(bad, S = 4000, K = 1)
  expect_lt(dg$n_finite, 100)
  expect_match(dg$khat_label, "too noisy")
  expect_no_match(dg$khat_label, "good")
  # labels: small ESS is never good, even with a small k-hat
  expect_no_match(vbayes:::khat_label(0.1, ess = 3, S = 4000), "good")
  expect_match(vbayes:::khat_label(0.1, ess = 3, S = 4000), "bad")
  expect_match(vbayes:::khat_label(0.3, ess = 300, S = 4000), "^ok")
})

test_that("ESS of importance weights: sqrt(2 s^2 - 1) / s^2 of S for a N(0, s^2) q of a N(0, 1) target", {
  set.seed(15)
  s2 <- 2
  fit <- structure(list(coefficients = c(t = 0), vcov = matrix(s2), elbo = NA_real_),
                   class = c("vbdensity_test_q", "vb_posterior"))
  registerS3method("log_joint", "vbdensity_test_q", function(fit, theta) dnorm(theta[1, ], log = TRUE),
                   envir = asNamespace("vbayes"))
  dg <- vb_diagnose(fit, S = 1e5, K = 1)
  expect_lt(abs(dg$ess / 1e5 - sqrt(2 * s2 - 1) / s2), 0.02)
})

test_that("progress goes through message() (suppressMessages silences it); quiet never silences a warning", {
  f <- function(th) { for (i in 1:30000) NULL; -0.5 * sum(th^2) }
  # progress lines come every vbayes.progress_interval CPU seconds (1 by
  # default): a short interval, so that a run of any length shows some
  old <- options(vbayes.progress_interval = 0)
  on.exit(options(old))
  set.seed(16)
  msgs <- character(0)
  withCallingHandlers(
    vb_density(f, init = c(0, 0), control = vb_control(sgvb_maxit = 3000)),
    message = function(m) { msgs <<- c(msgs, conditionMessage(m)); invokeRestart("muffleMessage") },
    warning = function(w) invokeRestart("muffleWarning"))
  expect_true(any(grepl("sgvb", msgs)))
  expect_silent(suppressWarnings(suppressMessages(
    vb_density(f, init = c(0, 0), control = vb_control(sgvb_maxit = 3000)))))
})

test_that("bounds and init_method are checked", {
  f <- function(x) -x^2
  expect_error(vb_density(f, 1, lower = 2), "inside the bounds")
  expect_error(vb_density(f, 1, lower = 1, upper = 0), "below its 'upper'")
  expect_error(vb_density(f, c(1, 1), lower = c(0, 0, 0)), "one per parameter")
  expect_error(vb_density(f, 1, lower = NA), "'lower'")
  expect_error(vb_density(f, 1, init_method = "bogus"))
  expect_error(vb_density(function(x) structure(-x^2, gradient = c(1, 2)), 1), "gradient")
})
