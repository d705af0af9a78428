# ARD priors: the coordinate ascent against a direct numerical optimisation of
# the same ELBO (written here from the model, independently of the engine),
# the closed-form gap to the fixed prior at E[alpha], monotone sweeps, pruning.

ard_data <- function(n = 60, seed = 3) {
  set.seed(seed)
  d <- data.frame(x1 = rnorm(n), x2 = rnorm(n), x3 = rnorm(n))
  d$y <- rpois(n, exp(0.3 + 0.7 * d$x1))
  d
}

# ELBO of y ~ Poisson(exp(X beta)), beta0 ~ N(0, s0^2), beta_g ~ N(0, 1/alpha_g),
# alpha_g ~ Gamma(a0, b0), under q = N(m, LL') x prod Gamma(a_g, b_g).
ard_elbo_direct <- function(par, X, y, grp, a0, b0, s0) {
  p <- ncol(X); G <- max(grp, na.rm = TRUE)
  m <- par[1:p]
  L <- matrix(0, p, p); L[lower.tri(L, diag = TRUE)] <- par[p + seq_len(p * (p + 1) / 2)]
  diag(L) <- exp(diag(L))
  ab <- exp(par[p + p * (p + 1) / 2 + seq_len(2 * G)])
  a <- ab[1:G]; b <- ab[G + 1:G]
  S <- tcrossprod(L)
  eta <- drop(X %*% m); v <- rowSums((X %*% S) * X)
  ll <- sum(y * eta - exp(eta + v / 2) - lgamma(y + 1))
  e2 <- m^2 + diag(S)
  lp <- -0.5 * log(2 * pi * s0^2) - e2[1] / (2 * s0^2)
  for (g in 1:G) {
    j <- which(grp == g)
    elog <- digamma(a[g]) - log(b[g])
    lp <- lp + length(j) * (-0.5 * log(2 * pi) + 0.5 * elog) - 0.5 * a[g] / b[g] * sum(e2[j])
    # E log p(alpha) - E log q(alpha)
    lp <- lp + (a0 * log(b0) - lgamma(a0) + (a0 - 1) * elog - b0 * a[g] / b[g]) -
      (a[g] * log(b[g]) - lgamma(a[g]) + (a[g] - 1) * elog - a[g])
  }
  ent <- 0.5 * p * (1 + log(2 * pi)) + sum(log(diag(L)))
  ll + lp + ent
}

test_that("the ARD fit reaches the optimum of its ELBO found by direct optimisation", {
  d <- ard_data()
  pr <- ard(shape = 0.5, rate = 0.2, groups = c("a", "b", "b"))
  fit <- vb(y ~ x1 + x2 + x3, data = d, family = poisson(), prior = pr, prior_intercept = normal(0, 5),
            control = vb_control(tol = 1e-12, maxit = 500))
  expect_true(fit$converged)
  X <- model.matrix(~ x1 + x2 + x3, d)
  grp <- c(NA, 1, 2, 2)
  p <- 4
  L0 <- diag(log(0.1), p)
  start <- c(rep(0, p), L0[lower.tri(L0, diag = TRUE)], log(c(1, 1, 1, 1)))
  f <- function(par) -ard_elbo_direct(par, X, d$y, grp, 0.5, 0.2, 5)
  opt <- optim(start, f, method = "BFGS", control = list(maxit = 5000, reltol = 1e-14))
  opt <- optim(opt$par, f, method = "BFGS", control = list(maxit = 5000, reltol = 1e-14))
  expect_equal(fit$elbo, -opt$value, tolerance = 1e-6 / abs(opt$value))
  expect_gte(fit$elbo, -opt$value - 1e-6)
  # the engine's q(alpha) and means at the same optimum
  G <- 2
  ab <- exp(opt$par[p + p * (p + 1) / 2 + seq_len(2 * G)])
  expect_equal(fit$ard$E_alpha, ab[1:G] / ab[G + 1:G], tolerance = 1e-3)
  expect_equal(unname(coef(fit)), opt$par[1:p], tolerance = 1e-3)
  # and the ELBO evaluated at the engine's q by the independent formula
  S <- fit$vcov
  Lf <- t(chol(S)); diag(Lf) <- log(diag(Lf))
  ea <- fit$ard$E_alpha; a <- 0.5 + fit$ard$size / 2; b <- a / ea
  mine <- ard_elbo_direct(c(coef(fit), Lf[lower.tri(Lf, diag = TRUE)], log(a), log(b)), X, d$y, grp, 0.5, 0.2, 5)
  expect_equal(fit$elbo, unname(mine), tolerance = 1e-9 / abs(mine))
})

test_that("sweeps never lower the ELBO, and the gap to the fixed prior at E[alpha] is the closed form", {
  d <- ard_data(200, 4)
  fit <- vb(y ~ x1 + x2 + x3, data = d, family = poisson(), prior = ard(), control = vb_control(tol = 1e-12))
  expect_true(all(diff(fit$elbo_trace) >= -1e-9 * abs(fit$elbo)))
  # the same Gaussian q(beta) is optimal for the fixed prior N(0, 1/E[alpha]);
  # ELBO_fixed - ELBO_ard = sum_g d_g/2 (log E alpha - E log alpha) + KL(q(alpha) || p(alpha))
  fixed <- vb(y ~ x1 + x2 + x3, data = d, family = poisson(), prior = normal(0, fit$ard$prior_sd),
              control = vb_control(tol = 1e-12))
  a <- 0.01 + fit$ard$size / 2; b <- a / fit$ard$E_alpha
  kl <- (a - 0.01) * digamma(a) - lgamma(a) + lgamma(0.01) + 0.01 * (log(b) - log(1e-4)) + a * (1e-4 - b) / b
  gap <- sum(fit$ard$size / 2 * (log(a) - digamma(a)) + kl)
  expect_equal(elbo(fixed) - elbo(fit), gap, tolerance = 1e-6)
  expect_equal(coef(fixed), coef(fit), tolerance = 1e-5)
})

test_that("ARD prunes the groups the data do not support", {
  set.seed(7)
  n <- 3000
  X <- matrix(rnorm(n * 8), n, 8, dimnames = list(NULL, paste0("x", 1:8)))
  d <- data.frame(X)
  d$y <- rpois(n, exp(0.2 + 0.5 * d$x1 - 0.4 * d$x2))
  fit <- vb(y ~ ., data = d, family = poisson(), prior = ard())
  ea <- setNames(fit$ard$E_alpha, fit$ard$coefficients)
  expect_lt(max(ea[c("x1", "x2")]), 20)
  expect_gt(min(ea[paste0("x", 3:8)]), 200)
  expect_true(all(abs(coef(fit)[paste0("x", 3:8)]) < 0.05))
  # against glm, the supported effects are nearly unshrunk
  g <- glm(y ~ ., data = d, family = poisson())
  expect_equal(coef(fit)[c("x1", "x2")], coef(g)[c("x1", "x2")], tolerance = 0.02)
})

test_that("ard() and its groups are checked", {
  d <- ard_data()
  expect_error(ard(0), "positive")
  expect_error(ard(1, Inf), "positive")
  expect_error(ard(1, 1, groups = NA), "groups")
  expect_error(vb(y ~ x1 + x2, d, family = poisson(), prior = ard(groups = 1)), "one group label per")
  expect_error(vb(y ~ x1 + x2, d, family = poisson(), prior = ard(groups = list("x1"))), "partition")
  expect_error(vb(y ~ x1, d, family = poisson(), prior = ard(), method = "sgvb"), "coordinate ascent")
  fit <- vb(y ~ x1 + x2 + x3, d, family = poisson(), prior = ard(groups = list(c("x1", "x3"), "x2")))
  expect_identical(fit$ard$coefficients, c("x1, x3", "x2"))
})

test_that("the engine's warm start resumes q(beta): it stays at an optimum and reaches the cold fit's from elsewhere", {
  set.seed(11)
  X <- cbind(1, matrix(rnorm(400 * 4), 400, 4))
  y <- rpois(400, exp(0.3 + X[, -1] %*% c(0.4, -0.2, 0, 0.1)))
  M <- c_model(X, y)
  ctl <- vb_control(maxit = 200, tol = 1e-12)
  for (blocks in list(integer(5), 0:4)) { # fullrank and meanfield
    cold <- .Call(vbayes:::C_glm_cavi, M, c(rep(0, 5), 1, 1), blocks, ctl)
    expect_identical(cold$status, 0L)
    P <- solve(cold$Sigma)
    warm <- .Call(vbayes:::C_glm_cavi, M, c(cold$mu, 1, 1, P), blocks, ctl)
    expect_identical(warm$status, 0L)
    expect_lte(warm$iterations, 2L)
    expect_equal(warm$elbo, cold$elbo, tolerance = 1e-10)
    # from a precision twice the optimum's and shifted means: the same optimum, never decreasing
    far <- .Call(vbayes:::C_glm_cavi, M, c(cold$mu + 0.1, 1, 1, 2 * P), blocks, ctl)
    expect_identical(far$status, 0L)
    expect_equal(far$elbo, cold$elbo, tolerance = 1e-9)
    expect_true(all(diff(far$trace) >= -1e-9 * abs(cold$elbo)))
  }
  # a starting precision that is not positive definite is a status, not a crash
  bad <- .Call(vbayes:::C_glm_cavi, M, c(rep(0, 5), 1, 1, -diag(5)), integer(5), ctl)
  expect_false(identical(bad$status, 0L))
  expect_error(.Call(vbayes:::C_glm_cavi, M, c(rep(0, 5), 1, 1, 1), integer(5), ctl), "p \\+ 2")
  expect_error(.Call(vbayes:::C_glm_cavi, M, c(rep(0, 5), 1, 1, rep(NA, 25)), integer(5), ctl), "finite")
})
