# Accuracy of the fast paths of issue 18 against independent references:
# the binomial moment expansion (src/expect.c) against adaptive quadrature,
# the gaussian sufficient-statistics path against a dense solve and lm(), the
# rank the engine takes from X'WX against qr(), the one-pass separation check.

quad <- function(m, v, g) {
  s <- sqrt(v)
  integrate(function(z) g(m + s * z) * dnorm(z), -Inf, Inf, rel.tol = 2e-14, abs.tol = 0,
            subdivisions = 1000L)$value
}
softplus <- function(u) pmax(u, 0) + log1p(exp(-abs(u)))

# f, df/dm, df/dv of one observation (y of w trials) from the closed-form ELBO
# of a one-coefficient model x = 1, mu = m, Sigma = v (prior terms removed).
obs_terms <- function(m, v, y = 0, w = 1, b = 1e3) {
  gh <- vbayes:::gauss_hermite(32L)
  mod <- list(X = matrix(1, 1, 1), y = y, offset = 0, weights = w, family = 2L, prior_type = 0L,
              prior_location = 0, prior_scale = b, tau_prior = c(1, 1), gh_x = gh$x, gh_w = gh$w)
  e <- .Call(vbayes:::C_glm_elbo, mod, m, matrix(v), c(1, 1))
  c(f = e$loglik - lchoose(w, y), dm = e$grad_mu + m / b^2, dv = e$grad_Sigma[1] + 0.5 / b^2 - 0.5 / v)
}

test_that("binomial E softplus, E sigmoid, E sigmoid' match quadrature across the regimes of v", {
  grid <- expand.grid(m = c(-35, -9, -2.5, -0.4, 0, 0.7, 3.2, 14), v = c(1e-4, 7e-4, 4e-3, 0.012, 0.03, 0.05, 0.08, 0.15, 0.22, 0.5, 3))
  for (i in seq_len(nrow(grid))) {
    m <- grid$m[i]; v <- grid$v[i]
    got <- obs_terms(m, v)
    ref <- c(-quad(m, v, softplus), -quad(m, v, plogis), -0.5 * quad(m, v, function(u) plogis(u) * plogis(-u)))
    lab <- sprintf("m = %g, v = %g", m, v)
    expect_lt(abs(got[["f"]] - ref[1]), 1e-13 * max(1, abs(ref[1])), label = paste("value,", lab))
    expect_lt(abs(got[["dm"]] - ref[2]), 1e-13, label = paste("d/dm,", lab))
    # d/dv is read through 0.5 / v, which loses about eps / v
    expect_lt(abs(got[["dv"]] - ref[3]), 1e-13 + 4e-16 / v, label = paste("d/dv,", lab))
  }
})

test_that("a logistic fit's ELBO is within 1e-10 (relative) of the quadrature ELBO, and its trace is monotone", {
  set.seed(18)
  n <- 3000
  d <- data.frame(x1 = rnorm(n), x2 = rnorm(n), x3 = runif(n))
  d$y <- rbinom(n, 1, plogis(-0.3 + d$x1 - 0.5 * d$x2 + d$x3))
  pr <- list(type = rep("normal", 4), location = rep(0, 4), scale = c(10, 1, 1, 1))
  for (ap in c("fullrank", "meanfield")) {
    fit <- vb(y ~ x1 + x2 + x3, data = d, family = binomial(), approx = ap, prior = normal(0, 1),
              prior_intercept = normal(0, 10), control = vb_control(quiet = TRUE, tol = 1e-10))
    expect_true(fit$converged)
    # most rows are in the expansion's regime (v <= 0.034)
    expect_gt(mean(fit$linear.predictors.var <= 0.034), 0.9)
    ref <- ref_elbo_fit(fit, pr)
    expect_lt(abs(fit$elbo - ref[["elbo"]]) / abs(ref[["elbo"]]), 1e-10, label = ap)
    tr <- fit$elbo_trace
    expect_true(all(diff(tr) >= -1e-13 * abs(tr[-1])), label = paste(ap, "trace monotone"))
  }
})

test_that("gaussian fullrank (sufficient statistics) is the CAVI fixed point by a dense solve and lm() in the wide-prior limit", {
  set.seed(2)
  n <- 400
  X <- cbind("(Intercept)" = 1, a = rnorm(n), b = rnorm(n))
  w <- rep(c(1, 2, 0, 0.5), length.out = n)
  off <- runif(n)
  y <- drop(X %*% c(1, -2, 0.5)) + off + rnorm(n, sd = 0.7)
  fit <- vb_fit(X, y, weights = w, offset = off, prior = normal(0, 2), prior_intercept = normal(0, 5),
                prior_precision = gamma_prior(1, 1), control = vb_control(quiet = TRUE, tol = 1e-12))
  expect_true(fit$converged)
  # q(beta) was updated at the E tau before the last q(tau) step: at tol = 1e-12
  # on the ELBO (quadratic near the optimum) E tau has settled to about 1e-6
  Et <- fit$tau[["shape"]] / fit$tau[["rate"]]
  P <- diag(1 / c(5, 2, 2)^2)
  Lam <- Et * crossprod(X, w * X) + P
  mu <- solve(Lam, Et * crossprod(X, w * (y - off)))
  expect_equal(unname(coef(fit)), unname(drop(mu)), tolerance = 1e-6)
  expect_equal(unname(vcov(fit)), unname(solve(Lam)), tolerance = 1e-6)
  # q(tau) = Gamma(a0 + n+/2, b0 + E||W^1/2 (y - X b - off)||^2 / 2), n+ rows with w > 0
  r <- y - off - drop(X %*% mu)
  B <- 1 + 0.5 * (sum(w * r^2) + sum(diag(crossprod(X, w * X) %*% solve(Lam))))
  expect_equal(unname(fit$tau), c(1 + sum(w > 0) / 2, B), tolerance = 1e-6)
  # gaussian fits carry no linear-predictor variances; predict() computes them
  expect_null(fit$linear.predictors.var)
  expect_equal(predict(fit, se.fit = TRUE)$se.fit^2, rowSums((X %*% solve(Lam)) * X), tolerance = 1e-6,
               ignore_attr = TRUE)
  # the ELBO against the independent reference
  ref <- ref_elbo_fit(fit, list(type = rep("normal", 3), location = rep(0, 3), scale = c(5, 2, 2)))
  expect_equal(fit$elbo, ref[["elbo"]], tolerance = 1e-10)
  # wide priors: lm()'s coefficients
  fw <- vb_fit(X, y, weights = w, offset = off, prior = normal(0, 1e4), prior_intercept = normal(0, 1e4),
               control = vb_control(quiet = TRUE))
  expect_equal(unname(coef(fw)), unname(coef(lm(y ~ X - 1, weights = w, offset = off))), tolerance = 1e-6)
})

test_that("the rank comes from X'WX over rows with positive weight, as qr() gives it", {
  set.seed(3)
  n <- 200
  x <- rnorm(n)
  X <- cbind("(Intercept)" = 1, x = x, x2 = 2 * x + 1, z = rnorm(n))
  y <- rpois(n, exp(0.2 + 0.3 * x))
  for (fam in list(gaussian(), poisson(), binomial())) {
    yy <- if (fam$family == "binomial") as.numeric(y > 1) else y
    for (ap in c("fullrank", "meanfield")) {
      f <- suppressWarnings(vb_fit(X, yy, family = fam, approx = ap, control = vb_control(quiet = TRUE)))
      expect_equal(f$rank, qr(X)$rank, label = paste(fam$family, ap))
    }
  }
  # a column that is non-zero only where the weight is zero does not count
  X2 <- cbind(X[, c(1, 2, 4)], e = c(1, rep(0, n - 1)))
  f <- vb_fit(X2, y, family = poisson(), weights = c(0, rep(1, n - 1)), control = vb_control(quiet = TRUE))
  expect_equal(f$rank, 3L)
})

test_that("the separation check finds separating columns and the posterior-mean direction, with mixed rows and zero weights", {
  set.seed(4)
  n <- 60
  x <- rnorm(n); z <- rnorm(n)
  X <- cbind("(Intercept)" = 1, x = x, z = z)
  expect_true(vbayes:::is_separated(X, as.numeric(x > 0.3), rep(1, n)))
  expect_true(vbayes:::is_separated(X, as.numeric(x < -0.1), rep(1, n)))   # the negated column
  expect_false(vbayes:::is_separated(X, rbinom(n, 1, 0.5) * 0 + as.numeric(rank(x) %% 2 == 0), rep(1, n)))
  # quasi-complete: rows at x = 0 with both outcomes (binomial, 2 trials), the rest separated
  x3 <- c(rep(0, 10), runif(25, 0.1, 2), -runif(25, 0.1, 2))
  X3 <- cbind("(Intercept)" = 1, x = x3)
  y3 <- c(rep(1, 10), rep(2, 25), rep(0, 25))
  expect_true(vbayes:::is_separated(X3, y3, rep(2, 60)))
  # a zero-weight row that would break separation is ignored
  y4 <- as.numeric(x > 0.3); y4[which.max(x)] <- 0
  w4 <- rep(1, n); w4[which.max(x)] <- 0
  expect_false(vbayes:::is_separated(X, y4, rep(1, n)))
  expect_true(vbayes:::is_separated(X, y4, w4))
  # separation along x + z (no single column): found through the posterior mean
  y5 <- as.numeric(x + z > 0)
  expect_true(vbayes:::is_separated(X, y5, rep(1, n), mu = c(0, 1, 1)))
  expect_false(vbayes:::is_separated(X, y5, rep(1, n)))
})

test_that("gaussian meanfield (sufficient statistics) is the meanfield CAVI fixed point by a dense solve", {
  set.seed(5)
  n <- 300
  X <- cbind("(Intercept)" = 1, a = rnorm(n), b = rnorm(n))
  X[, "b"] <- X[, "b"] + 0.6 * X[, "a"] # correlated columns: meanfield != fullrank
  w <- rep(c(1, 2, 0, 0.5), length.out = n)
  off <- runif(n)
  y <- drop(X %*% c(1, -2, 0.5)) + off + rnorm(n, sd = 0.7)
  pri <- list(prior = normal(0, 2), prior_intercept = normal(0, 5), prior_precision = gamma_prior(1, 1))
  fit <- vb_fit(X, y, weights = w, offset = off, prior = pri$prior, prior_intercept = pri$prior_intercept,
                prior_precision = pri$prior_precision, approx = "meanfield",
                control = vb_control(quiet = TRUE, tol = 1e-12))
  expect_true(fit$converged)
  # the meanfield CAVI equations iterated in R, coordinate by coordinate (prior locations 0):
  # mu_j = E tau (h_j - sum_k!=j G_jk mu_k) / H_jj, s_j^2 = 1 / H_jj, then q(tau)
  G <- crossprod(X, w * X); h <- drop(crossprod(X, w * (y - off))); P <- 1 / c(5, 2, 2)^2
  Et <- 1; mu <- rep(0, 3)
  for (i in 1:200) {
    H <- Et * G + diag(P)
    for (j in 1:3) mu[j] <- (Et * (h[j] - sum(G[j, -j] * mu[-j]))) / H[j, j]
    s2 <- 1 / diag(H)
    r <- y - off - drop(X %*% mu)
    B <- 1 + 0.5 * (sum(w * r^2) + sum(diag(G) * s2))
    Et <- (1 + sum(w > 0) / 2) / B
  }
  expect_equal(unname(coef(fit)), mu, tolerance = 1e-6)
  expect_equal(unname(diag(vcov(fit))), unname(s2), tolerance = 1e-6)
  expect_equal(sum(abs(vcov(fit)[upper.tri(vcov(fit))])), 0)
  expect_equal(unname(fit$tau), c(1 + sum(w > 0) / 2, B), tolerance = 1e-6)
  expect_null(fit$linear.predictors.var)
  expect_equal(predict(fit, se.fit = TRUE)$se.fit^2, drop(X^2 %*% s2), tolerance = 1e-6, ignore_attr = TRUE)
  ref <- ref_elbo_fit(fit, list(type = rep("normal", 3), location = rep(0, 3), scale = c(5, 2, 2)))
  expect_equal(fit$elbo, ref[["elbo"]], tolerance = 1e-10)
  # correlated columns: the fullrank optimum is strictly higher
  ff <- vb_fit(X, y, weights = w, offset = off, prior = pri$prior, prior_intercept = pri$prior_intercept,
               prior_precision = pri$prior_precision, control = vb_control(quiet = TRUE, tol = 1e-12))
  expect_lt(fit$elbo, ff$elbo)
  tr <- fit$elbo_trace
  expect_true(all(diff(tr) >= -1e-13 * abs(tr[-1])))
})

test_that("the IRLS-like first step: logistic and Poisson fullrank fits need no more iterations than glm()", {
  set.seed(6)
  n <- 5000
  X <- cbind("(Intercept)" = 1, matrix(rnorm(n * 5), n, 5, dimnames = list(NULL, letters[1:5])))
  b <- c(-0.5, 1, -1, 0.5, 0.25, 0)
  for (fam in list(binomial(), poisson())) {
    y <- if (fam$family == "binomial") rbinom(n, 1, plogis(X %*% b)) else rpois(n, exp(X %*% b / 2))
    g <- glm.fit(X, y, family = fam)
    for (ap in c("fullrank", "meanfield")) {
      f <- vb_fit(X, y, family = fam, approx = ap, control = vb_control(quiet = TRUE))
      expect_true(f$converged)
      # meanfield reuses the factor of X'WX across sweeps (quasi-Newton): one sweep more allowed
      expect_lte(f$iterations, g$iter + (ap == "meanfield"), label = paste(fam$family, ap, "iterations"))
      tr <- f$elbo_trace
      expect_true(all(diff(tr) >= -1e-13 * abs(tr[-1])), label = paste(fam$family, ap, "monotone"))
    }
    # wide priors: glm()'s coefficients (the posterior mean is within a small fraction of an sd)
    f <- vb_fit(X, y, family = fam, prior = normal(0, 1e4), prior_intercept = normal(0, 1e4),
                control = vb_control(quiet = TRUE))
    expect_lt(max(abs(coef(f) - g$coefficients) / sqrt(diag(vcov(f)))), 0.05, label = fam$family)
  }
})

test_that("the design scan's moments, flags and class ranges are those of base R", {
  set.seed(31)
  n <- 257
  X <- cbind("(Intercept)" = 1, a = rnorm(n, 5, 2), k = 3, b = rexp(n), o = c(1, rep(1, n - 1)))
  X[1:4, "k"] <- 7 # constant only over the rows that count
  w <- rep(c(2, 0, 1, 3), length.out = n); w[1:4] <- 0
  y <- pmin(rpois(n, 1), w)
  cls <- as.integer(y == w) - as.integer(y == 0); cls[w <= 0] <- NA_integer_
  s <- .Call(vbayes:::C_design_scan, X, as.double(w), cls)
  pos <- w > 0
  wm <- function(x) sum(w[pos] * x[pos]) / sum(w[pos])
  wsd <- function(x) sqrt(sum(w[pos] * (x[pos] - wm(x))^2) / (sum(w[pos]) - 1))
  expect_true(s$finite)
  expect_equal(s$maxabs, max(abs(X)))
  expect_equal(s$mean, unname(apply(X, 2, wm)), tolerance = 1e-14)
  expect_equal(s$sd[c(2, 4)], unname(apply(X[, c(2, 4)], 2, wsd)), tolerance = 1e-13)
  expect_equal(s$const, c(TRUE, FALSE, TRUE, FALSE, TRUE))
  expect_equal(s$ones, c(TRUE, FALSE, FALSE, FALSE, TRUE))
  rng <- function(x, idx) if (any(idx)) range(x[idx]) else c(Inf, -Inf)
  for (j in seq_len(ncol(X))) {
    ref <- c(rng(X[, j], cls %in% 1L), rng(X[, j], cls %in% -1L), rng(X[, j], cls %in% 0L))
    expect_equal(s$ranges[, j], ref, label = colnames(X)[j])
  }
  # the scan stops at a non-finite entry; without classes there are no ranges
  X2 <- X; X2[10, 4] <- NaN
  s2 <- .Call(vbayes:::C_design_scan, X2, as.double(w), NULL)
  expect_false(s2$finite)
  expect_null(s2$ranges)
  # the centred copy keeps dimnames and leaves X alone
  ce <- c(0, 5, 3, 1, 0)
  Xc <- .Call(vbayes:::C_centre_design, X, ce)
  expect_identical(Xc, X - rep(ce, each = n))
  expect_identical(X[1, "a"], X[1, 2])
})

test_that("the separation check from the scan's ranges agrees with the column passes", {
  set.seed(32)
  for (r in 1:40) {
    n <- 40 + r
    X <- cbind("(Intercept)" = 1, u = rnorm(n), v = sample(0:2, n, TRUE))
    w <- sample(c(0, 1, 2), n, TRUE, prob = c(0.1, 0.6, 0.3))
    y <- switch(1 + r %% 3,
                as.numeric(X[, "u"] > 0.2) * w,        # separated by u
                rbinom(n, w, plogis(X[, "u"])),      # usually not
                ifelse(X[, "v"] == 0, 0, w))         # quasi-separated by v
    d <- vbayes:::check_glm_data(X, y, binomial(), w, NULL, NULL)
    mu <- c(0.1, rnorm(2))
    expect_identical(vbayes:::is_separated(X, y, w, mu, d$scan), vbayes:::is_separated(X, y, w, mu),
                     label = paste("replicate", r))
  }
})

test_that("fullrank Poisson and logistic fits stop at a stationary point of the closed-form ELBO", {
  set.seed(33)
  n <- 2000; p <- 25
  X <- cbind("(Intercept)" = 1, matrix(rnorm(n * (p - 1)), n) / sqrt(p))
  colnames(X) <- c("(Intercept)", paste0("x", 1:(p - 1)))
  b <- c(0.2, rnorm(p - 1))
  for (fam in c("poisson", "binomial")) {
    eta <- drop(X %*% b)
    y <- if (fam == "poisson") rpois(n, exp(0.5 * eta)) else rbinom(n, 1, plogis(eta))
    fit <- vb_fit(X, y, family = get(fam)(), prior = normal(0, 2), prior_intercept = normal(0, 5),
                  control = vb_control(quiet = TRUE))
    expect_true(fit$converged)
    e <- .Call(vbayes:::C_glm_elbo, vbayes:::fit_model(fit), unname(fit$coefficients), unname(fit$vcov), c(1, 1))
    pr <- list(type = rep("normal", p), location = rep(0, p), scale = c(5, rep(2, p - 1)))
    expect_lt(abs(fit$elbo - ref_elbo_fit(fit, pr)[["elbo"]]), 1e-10 * abs(fit$elbo)) # helper-elbo.R
    expect_equal(e$elbo, fit$elbo, tolerance = 1e-12)
    # the gain a full Newton step predicts at the returned q, from the closed-form
    # gradients: 1/2 g' Sigma g + || Sigma^1/2 dELBO/dSigma Sigma^1/2 ||_F^2 (= 1/4
    # || (Lambda - Lambda*) Sigma ||_F^2), within tol |ELBO| as the criterion says
    S <- unname(fit$vcov)
    R <- chol(S)
    pred <- 0.5 * drop(crossprod(e$grad_mu, S %*% e$grad_mu)) + norm(R %*% e$grad_Sigma %*% t(R), "F")^2
    expect_lt(pred, 1e-8 * abs(fit$elbo), label = paste(fam, "predicted gain"))
    # and the same optimum as a run to tol = 1e-13: the ELBO within tol, so each
    # mean within sqrt(2 tol |ELBO|) posterior sd
    ref <- vb_fit(X, y, family = get(fam)(), prior = normal(0, 2), prior_intercept = normal(0, 5),
                  control = vb_control(quiet = TRUE, tol = 1e-13))
    expect_lt(max(abs(fit$coefficients - ref$coefficients) / sqrt(diag(ref$vcov))),
              sqrt(2e-8 * abs(ref$elbo)))
    expect_lt(abs(fit$elbo - ref$elbo), 1e-8 * abs(ref$elbo))
  }
})

test_that("a Poisson fit with large effects starts by damped Newton steps and converges to glm()'s estimate", {
  # rates from e^-11 to e^9: a full Newton step from beta = 0 overshoots by
  # orders of magnitude (the start's log posterior was -1e32), and fits took
  # 45 iterations (fullrank) or stopped unconverged after 500 sweeps (meanfield)
  set.seed(40)
  n <- 20000; p <- 30; rho <- 0.5
  Z <- sqrt(1 - rho) * matrix(rnorm(n * (p - 1)), n) + sqrt(rho) * rnorm(n)
  X <- cbind(1, Z)
  y <- rpois(n, exp(drop(X %*% c(-1, rnorm(p - 1, 0, 0.3)))))
  g <- glm.fit(X, y, family = poisson())
  se <- sqrt(diag(chol2inv(qr.R(g$qr))))
  for (a in c("fullrank", "meanfield")) {
    f <- vb_fit(X, y, family = poisson(), approx = a, prior = normal(0, 10), prior_intercept = normal(0, 10),
                control = vb_control(quiet = TRUE))
    expect_true(f$converged)
    expect_lte(f$iterations, 15L)
    if (a == "fullrank") {
      expect_lt(max(abs(coef(f) - g$coefficients) / se), 0.1) # n is large: q mean and MLE agree to a fraction of an sd
      fr <- f
    }
  }
  expect_lt(elbo(f), elbo(fr)) # the meanfield family is the smaller one
})

test_that("the conjugate-gradient first step of a wide fullrank start reaches the same optimum", {
  # p >= 32: the first Newton step of the start is solved by preconditioned CG;
  # on strongly autocorrelated columns (AR(1), rho = 0.995: condition number
  # ~1e5) CG does not converge in its budget and the exact step is taken.
  # Either way the fit is the stationary point a run to tol = 1e-13 finds, and
  # its ELBO is the closed form's.
  set.seed(34)
  n <- 3000; p <- 40
  Z <- matrix(rnorm(n * (p - 1)), n)
  A <- Z
  for (j in 2:(p - 1)) A[, j] <- 0.995 * A[, j - 1] + sqrt(1 - 0.995^2) * Z[, j]
  designs <- list(well = Z / sqrt(p), autocorrelated = A / sqrt(p))
  for (nm in names(designs)) {
    X <- cbind("(Intercept)" = 1, designs[[nm]])
    colnames(X) <- c("(Intercept)", paste0("x", 1:(p - 1)))
    eta <- drop(X %*% c(0.2, rnorm(p - 1, sd = 0.5)))
    for (fam in c("poisson", "binomial")) {
      y <- if (fam == "poisson") rpois(n, exp(0.5 * eta)) else rbinom(n, 1, plogis(eta))
      lab <- paste(nm, fam)
      fit <- vb_fit(X, y, family = get(fam)(), prior = normal(0, 2), prior_intercept = normal(0, 5),
                    control = vb_control(quiet = TRUE))
      ref <- vb_fit(X, y, family = get(fam)(), prior = normal(0, 2), prior_intercept = normal(0, 5),
                    control = vb_control(quiet = TRUE, tol = 1e-13))
      expect_true(fit$converged, label = lab)
      pr <- list(type = rep("normal", p), location = rep(0, p), scale = c(5, rep(2, p - 1)))
      expect_lt(abs(fit$elbo - ref_elbo_fit(fit, pr)[["elbo"]]), 1e-10 * abs(fit$elbo), label = lab)
      expect_lt(abs(fit$elbo - ref$elbo), 1e-8 * abs(ref$elbo), label = lab)
      expect_lt(max(abs(fit$coefficients - ref$coefficients) / sqrt(diag(ref$vcov))),
                sqrt(2e-8 * abs(ref$elbo)), label = lab)
      expect_true(all(diff(fit$elbo_trace) >= -1e-10 * abs(fit$elbo)), label = lab)
    }
  }
})

test_that("binomial fitted values are E sigmoid(eta) under the returned q, zero-weight rows included", {
  set.seed(35)
  n <- 400
  X <- cbind("(Intercept)" = 1, x = rnorm(n), z = runif(n))
  w <- sample(c(0, 1, 3, 10), n, TRUE)
  y <- rbinom(n, w, plogis(-0.5 + X[, 2] - X[, 3]))
  for (ap in c("fullrank", "meanfield")) {
    fit <- vb_fit(X, y, family = binomial(), weights = w, approx = ap, control = vb_control(quiet = TRUE))
    m <- fit$linear.predictors; v <- fit$linear.predictors.var
    # quadrature of sigmoid(m + sqrt(v) z) against the standard normal
    ref <- mapply(function(mt, vt) integrate(function(z) plogis(mt + sqrt(vt) * z) * dnorm(z), -Inf, Inf,
                                             rel.tol = 1e-12)$value, m, v)
    expect_lt(max(abs(fitted(fit) - ref)), 1e-10, label = ap)
    expect_false(anyNA(fitted(fit)), label = ap)
  }
})
