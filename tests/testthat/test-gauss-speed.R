# Issue 18, the gaussian fast path: the residual sum of squares from the
# sufficient statistics about an exact reference point, the design scan's
# moments, deviance() without stored linear-predictor variances, and the
# finiteness checks of the .Call boundary.  References are computed here in R
# (direct residuals, mean()/sd(), dense solves, lm()).

test_that("the rss shortcut matches a direct computation on an ill-conditioned design with a large intercept", {
  set.seed(181)
  n <- 2000
  x1 <- 100 + rnorm(n); x2 <- rnorm(n)
  X <- cbind("(Intercept)" = 1, x1 = x1, x2 = x2)
  y <- 1e6 + x1 + 0.5 * x2 + rnorm(n, sd = 0.1)
  w <- rep(c(1, 2, 0.5, 0), length.out = n)
  pr <- list(type = rep("normal", 3), location = rep(0, 3), scale = c(1e7, 10, 10))
  for (ap in c("fullrank", "meanfield")) {
    # explicit priors: the engine works on the raw (uncentred, ill-conditioned) design
    fit <- vb_fit(X, y, weights = w, approx = ap, prior = normal(0, 10), prior_intercept = normal(0, 1e7),
                  prior_precision = gamma_prior(1, 1), control = vb_control(quiet = TRUE, tol = 1e-8, maxit = 500))
    expect_true(fit$converged, label = ap)
    expect_gt(fit$iterations, 2) # later iterations used the shortcut
    # q(tau)'s rate from direct residuals at the returned q, formed without
    # rounding at the scale of y: y - mu_0 is exact (Sterbenz), the rest is O(100)
    mu <- unname(coef(fit)); S <- unname(vcov(fit))
    r <- (y - mu[1]) - (mu[2] * x1 + mu[3] * x2)
    ss <- sum(w * r^2) + sum(diag(crossprod(X * sqrt(w)) %*% S))
    expect_lt(abs(fit$tau[["rate"]] - (1 + ss / 2)) / (1 + ss / 2), 1e-9, label = ap)
    # the ELBO against the closed form evaluated in R
    ref <- ref_elbo_fit(fit, pr)
    expect_lt(abs(fit$elbo - ref[["elbo"]]) / abs(ref[["elbo"]]), 1e-10, label = ap)
    # the trace is monotone
    expect_true(all(diff(fit$elbo_trace) >= -1e-10 * abs(fit$elbo)), label = ap)
  }
})

test_that("the design scan's means and sds match mean() and sd() on columns with a large offset", {
  set.seed(182)
  for (n in c(1e3, 1e4 + 3, 2e5)) {
    X <- cbind(1e8 + rnorm(n), -3e7 + 1e-3 * rnorm(n), rnorm(n), 1)
    # exact references: x - shift is exact (Sterbenz), and mean()/sd() of the
    # shifted column are then accurate to a few eps; R's sd() of column 2
    # itself is off by ~1e-12 (relative) at these n
    sh <- c(1e8, -3e7, 0)
    ref_sd <- vapply(1:3, function(j) sd(X[, j] - sh[j]), 0)
    ref_m <- vapply(1:3, function(j) mean(X[, j] - sh[j]), 0) + sh
    sc <- .Call(vbayes:::C_design_scan, X, rep(1, n), NULL)
    expect_true(sc$finite)
    expect_lt(abs(sc$mean[1] - mean(X[, 1])) / mean(X[, 1]), 1e-12) # the brief's column
    expect_lt(abs(sc$sd[1] - sd(X[, 1])) / sd(X[, 1]), 1e-12)
    expect_lt(max(abs(sc$mean[1:3] - ref_m) / ref_sd), 1e-12)        # error on the scale of the sd
    expect_lt(max(abs(sc$sd[1:3] - ref_sd) / ref_sd), 1e-13)
    expect_equal(sc$sd[4], 0)
    expect_equal(sc$const, c(FALSE, FALSE, FALSE, TRUE))
    expect_equal(sc$ones, c(FALSE, FALSE, FALSE, TRUE))
    expect_equal(sc$maxabs, max(abs(X)))
    # moment weights 0/1 (the rows that count) and trials (binomial)
    keep <- seq_len(n) %% 3 != 0
    s0 <- .Call(vbayes:::C_design_scan, X, as.double(keep), NULL)
    r0 <- vapply(1:3, function(j) sd(X[keep, j] - sh[j]), 0)
    expect_lt(max(abs(s0$sd[1:3] - r0) / r0), 1e-13)
    expect_lt(max(abs(s0$mean[1:3] - (vapply(1:3, function(j) mean(X[keep, j] - sh[j]), 0) + sh)) / r0), 1e-12)
    wt <- as.double(rep(1:4, length.out = n))
    st <- .Call(vbayes:::C_design_scan, X, wt, NULL)
    Xs <- sweep(X[, 1:3], 2, sh)
    wm <- colSums(wt * Xs) / sum(wt)
    wsd <- sqrt(colSums(wt * sweep(Xs, 2, wm)^2) / (sum(wt) - 1))
    expect_lt(max(abs(st$mean[1:3] - (wm + sh)) / wsd), 1e-12)
    expect_lt(max(abs(st$sd[1:3] - wsd) / wsd), 1e-12)
  }
  # a column equal to 1 only on the rows that count
  X <- cbind(c(1, 1, 5), c(2, 3, 4))
  s <- .Call(vbayes:::C_design_scan, X, c(1, 1, 0), NULL)
  expect_equal(s$ones, c(FALSE, FALSE)); expect_equal(s$ones_pos, c(TRUE, FALSE))
  expect_equal(s$const, c(TRUE, FALSE))
})

test_that("the design scan and the engine reject non-finite designs; finite overflow is told apart", {
  X <- cbind(1, c(1, 2, NA, 4, 5)); w <- rep(1, 5)
  expect_false(.Call(vbayes:::C_design_scan, X, w, NULL)$finite)
  X[3, 2] <- Inf
  expect_false(.Call(vbayes:::C_design_scan, X, w, NULL)$finite)
  X[3, 2] <- -Inf
  expect_false(.Call(vbayes:::C_design_scan, X, rep(0, 5), NULL)$finite) # 0 * Inf is NaN too
  expect_error(vb_fit(cbind("(Intercept)" = 1, x = c(1, 2, NaN, 4, 5)), 1:5), "NA, NaN or infinite")
  # entries finite but their sum overflows: maxabs says so, vb_fit() says rescale
  big <- cbind(1, c(1e308, 1e308, 1, 2, 3))
  s <- .Call(vbayes:::C_design_scan, big, w, NULL)
  expect_true(s$finite)
  expect_false(is.finite(s$maxabs^2))
  expect_error(vb_fit(big, 1:5), "too large")
  # straight into the engine: the .Call's own (cheap) check still rejects NA and Inf
  set.seed(183)
  Xg <- cbind("(Intercept)" = 1, x = rnorm(20)); yg <- rnorm(20)
  fam <- gaussian()
  pa <- list(type = c(0L, 0L), location = c(0, 0), scale = c(10, 10))
  for (bad in c(NA, NaN, Inf, -Inf)) {
    Xb <- Xg; Xb[17, 2] <- bad
    M <- vbayes:::glm_model(Xb, yg, rep(1, 20), rep(0, 20), fam, pa, gamma_prior(1, 1), vb_control())
    expect_error(.Call(vbayes:::C_glm_cavi, M, c(0, 0, 1, 1), integer(2), vb_control(quiet = TRUE)),
                 "design matrix contains NA or infinite")
    M$X <- Xg; M$y[5] <- bad
    expect_error(.Call(vbayes:::C_glm_cavi, M, c(0, 0, 1, 1), integer(2), vb_control(quiet = TRUE)),
                 "must be finite")
  }
})

test_that("deviance() of a gaussian fit is the expected weighted RSS; other families keep their variances", {
  set.seed(184)
  n <- 400
  X <- cbind("(Intercept)" = 1, a = rnorm(n), b = runif(n))
  y <- drop(X %*% c(1, -1, 2)) + rnorm(n)
  w <- rep(c(1, 0, 2.5), length.out = n)
  for (ap in c("fullrank", "meanfield")) {
    fit <- vb_fit(X, y, weights = w, approx = ap, control = vb_control(quiet = TRUE))
    expect_null(fit$linear.predictors.var)
    m <- drop(X %*% coef(fit))
    ref <- sum(w * (y - m)^2) + sum(diag(crossprod(X * sqrt(w)) %*% vcov(fit)))
    expect_equal(deviance(fit), ref, tolerance = 1e-10, label = ap)
    # the same through the formula interface, and from x when the engine's value is absent
    f2 <- fit; f2$ewrss <- NULL
    expect_equal(deviance(f2), ref, tolerance = 1e-10)
    f2$x <- NULL
    expect_error(deviance(f2), "x = TRUE")
  }
  d <- data.frame(y = y, a = X[, 2], b = X[, 3])
  fv <- vb(y ~ a + b, data = d, weights = w, control = vb_control(quiet = TRUE))
  mv <- drop(model.matrix(fv) %*% coef(fv))
  expect_equal(deviance(fv), sum(w * (y - mv)^2) + sum(diag(crossprod(model.matrix(fv) * sqrt(w)) %*% vcov(fv))),
               tolerance = 1e-10)
  # poisson keeps the variances the CAVI engine needs
  yp <- rpois(n, exp(0.2 + 0.3 * X[, 2]))
  fp <- vb_fit(X, yp, family = poisson(), control = vb_control(quiet = TRUE))
  expect_length(fp$linear.predictors.var, n)
  expect_equal(fp$linear.predictors.var, rowSums((X %*% vcov(fp)) * X), tolerance = 1e-10)
})

test_that("a gaussian fit in the flat-prior limit agrees with lm() (formula and matrix interfaces)", {
  set.seed(185)
  n <- 5000
  # (x2's offset is moderate: with the explicit intercept prior the engine
  # solves the normal equations of the raw design, whose condition number
  # grows with the square of the offset; lm()'s QR does not)
  d <- data.frame(x1 = rnorm(n), x2 = 10 + rnorm(n), g = factor(sample(letters[1:3], n, TRUE)))
  d$y <- 1e6 + d$x1 - 2 * d$x2 + as.integer(d$g) + rnorm(n, sd = 0.5)
  ref <- lm(y ~ x1 + x2 + g, data = d)
  fit <- vb(y ~ x1 + x2 + g, data = d, prior = normal(0, 1e5), prior_intercept = normal(0, 1e9),
            control = vb_control(quiet = TRUE, tol = 1e-12))
  expect_equal(unname(coef(fit)), unname(coef(ref)), tolerance = 1e-8)
    # Sigma = (E[tau] X'X + P)^-1 -> (X'X)^-1 / E[tau] = vcov(lm) / sigma^2 / E[tau]
  Et <- fit$tau[["shape"]] / fit$tau[["rate"]]
  expect_equal(unname(vcov(fit)) * Et, unname(vcov(ref)) / sigma(ref)^2, tolerance = 1e-6)
  # deviance: RSS plus the posterior spread of the fit, sum_t x_t' Sigma x_t
  expect_equal(deviance(fit), deviance(ref) + sum(diag(crossprod(model.matrix(ref)) %*% vcov(fit))),
               tolerance = 1e-8)
  X <- model.matrix(ref)
  fm <- vb_fit(X, d$y, prior = normal(0, 1e5), prior_intercept = normal(0, 1e9),
               control = vb_control(quiet = TRUE, tol = 1e-12))
  expect_equal(unname(coef(fm)), unname(coef(lm.fit(X, d$y))), tolerance = 1e-8)
})

test_that("the rss shortcut about the start is exact to 1e-9 when the fit explains little of y", {
  # R^2 well below 0.99: the reference point stays at the start (no second
  # pair of passes over X), so rss(mu) comes from rss(mu0) - 2 d'g0 + d'G d
  # with d the whole move from the intercept-only start
  set.seed(186)
  n <- 50000
  X <- cbind("(Intercept)" = 1, x1 = 5 + rnorm(n), x2 = rnorm(n), x3 = runif(n))
  y <- 1e4 + 0.3 * X[, 2] - 0.2 * X[, 3] + 0.1 * X[, 4] + rnorm(n, sd = 2)
  w <- rep(c(1, 3, 0.5), length.out = n)
  pr <- list(type = rep("normal", 4), location = rep(0, 4), scale = c(1e5, 10, 10, 10))
  for (ap in c("fullrank", "meanfield")) {
    fit <- vb_fit(X, y, weights = w, approx = ap, prior = normal(0, 10), prior_intercept = normal(0, 1e5),
                  prior_precision = gamma_prior(1, 1), control = vb_control(quiet = TRUE, tol = 1e-10))
    expect_true(fit$converged, label = ap)
    mu <- unname(coef(fit)); S <- unname(vcov(fit))
    r <- (y - mu[1]) - drop(X[, -1] %*% mu[-1]) # y - mu_0 exact (Sterbenz)
    ss <- sum(w * r^2) + sum(diag(crossprod(X * sqrt(w)) %*% S))
    expect_lt(abs(fit$tau[["rate"]] - (1 + ss / 2)) / (1 + ss / 2), 1e-9, label = ap)
    ref <- ref_elbo_fit(fit, pr)
    expect_lt(abs(fit$elbo - ref[["elbo"]]) / abs(ref[["elbo"]]), 1e-10, label = ap)
    expect_true(all(diff(fit$elbo_trace) >= -1e-10 * abs(fit$elbo)), label = ap)
    # deviance() is the expected weighted rss at the returned q, from one exact pass
    expect_lt(abs(deviance(fit) - ss) / ss, 1e-10, label = ap)
  }
})

test_that("the response checks and sums in C agree with R, and each check gives its message", {
  set.seed(187)
  n <- 301
  y <- rpois(n, 3); w <- rep(c(2, 0, 1, 5), length.out = n); off <- rnorm(n, sd = 0.3)
  for (fam in 0:2) {
    yy <- if (fam == 2) pmin(y, w) else y + 0
    r <- .Call(vbayes:::C_glm_response, as.double(yy), w, off, fam)
    expect_identical(r$bad, 0L)
    pos <- w > 0
    ref <- c(npos = sum(pos), sw = sum(w[pos]), swy = sum(w[pos] * yy[pos]),
             swyo = sum(w[pos] * (yy[pos] - off[pos])), swexpoff = if (fam == 1) sum(w[pos] * exp(off[pos])) else 0,
             mean_off = mean(off[pos]), mean_y = mean(yy[pos]), sd_y = sd(yy[pos]),
             mean_yoff = mean(yy[pos] - off[pos]), ydev2 = sum(w[pos] * (yy[pos] - mean(yy[pos]))^2))
    expect_equal(r$ystats, ref, tolerance = 1e-13)
    expect_identical(r$mw, if (fam == 2) w else as.double(pos))
    if (fam == 2) {
      cls <- as.integer(yy == w) - as.integer(yy == 0); cls[!pos] <- NA_integer_
      expect_identical(r$cls, cls)
      u <- rnorm(n)
      rr <- function(k) if (any(cls %in% k)) range(u[cls %in% k]) else c(Inf, -Inf)
      expect_identical(.Call(vbayes:::C_class_ranges, u, cls), c(rr(1L), rr(-1L), rr(0L)))
    } else expect_null(r$cls)
  }
  X <- cbind("(Intercept)" = 1, x = seq(-1, 1, length.out = 6))
  expect_error(vb_fit(X, c(1, 2, NA, 1, 0, 1)), "'y' contains NA")
  expect_error(vb_fit(X, 1:6, weights = c(1, 1, NaN, 1, 1, 1)), "'weights' contains NA")
  expect_error(vb_fit(X, 1:6, offset = c(0, 0, 0, Inf, 0, 0)), "'offset' contains NA")
  expect_error(vb_fit(X, 1:6, weights = c(1, -1, 1, 1, 1, 1)), "non-negative")
  expect_error(vb_fit(X, 1:6, weights = rep(0, 6)), "every weight is zero")
  expect_error(vb_fit(X, c(1, 2, 3, 4, 5, 1e200)), "too large")
  expect_error(vb_fit(X, c(1, 2, 1.5, 0, 1, 1), family = poisson()), "whole counts")
  expect_error(vb_fit(X, c(1, 2, -1, 0, 1, 1), family = poisson()), "whole counts")
  expect_error(vb_fit(X, c(1, 0, 1, 0, 1, 1), family = binomial(), weights = c(1, 1, 2.5, 1, 1, 1)), "whole numbers")
  expect_error(vb_fit(X, c(1, 0, 3, 0, 1, 1), family = binomial(), weights = c(1, 1, 2, 1, 1, 1)), "between 0 and")
  expect_error(vb_fit(X, 1:6, family = poisson(), exposure = c(1, 1, NA, 1, 1, 1)), "'exposure' contains NA")
})

test_that("implicit centring reads the uncentred X and gives the centred copy's fit", {
  set.seed(188)
  n <- 3000; p <- 6
  X <- cbind("(Intercept)" = 1, matrix(rnorm(n * (p - 1), mean = 3, sd = 0.5), n))
  colnames(X) <- c("(Intercept)", paste0("x", 1:(p - 1)))
  y <- drop(X %*% rnorm(p)) + rnorm(n)
  w <- runif(n) * (runif(n) > 0.05); off <- rnorm(n, sd = 0.2)
  ns <- asNamespace("vbayes")
  d <- ns$check_glm_data(X, y, gaussian(), w, off, NULL)
  pri <- ns$resolve_priors(X, y, d$weights, d$offset, gaussian(), NULL, NULL, NULL, d$scan)
  ce <- pri$centre
  ctl <- vb_control(quiet = TRUE, tol = 1e-12)
  copy <- ns$glm_model(ns$centre_design(X, ce), y, d$weights, d$offset, gaussian(), pri$coef, pri$precision, ctl)
  impl <- ns$glm_model(X, y, d$weights, d$offset, gaussian(), pri$coef, pri$precision, ctl)
  impl$uncentred_by <- unname(ce); impl$uncentred_int <- 1L
  for (bl in list(integer(p), seq_len(p) - 1L)) {
    init <- ns$glm_init(copy, colnames(X), d$scan$ystats)
    a <- .Call(ns$C_glm_cavi, copy, init, bl, ctl)
    b <- .Call(ns$C_glm_cavi, impl, init, bl, ctl)
    expect_identical(a$status, 0L); expect_identical(b$status, 0L)
    expect_equal(b$mu, a$mu, tolerance = 1e-12)
    expect_equal(b$Sigma, a$Sigma, tolerance = 1e-11)
    expect_equal(b$elbo, a$elbo, tolerance = 1e-13)
    expect_equal(b$eta_mean, a$eta_mean, tolerance = 1e-12)
    expect_equal(b$ewrss, a$ewrss, tolerance = 1e-12)
    expect_identical(b$rank, a$rank)
  }
  # vb_fit() with the default priors takes this path here (means 6 sd from 0)
  fit <- vb_fit(X, y, weights = w, offset = off, control = ctl)
  a <- .Call(ns$C_glm_cavi, copy, ns$glm_init(copy, colnames(X), d$scan$ystats), integer(p), ctl)
  expect_equal(unname(coef(fit)), ns$uncentre_mean(setNames(a$mu, colnames(X)), ce), tolerance = 1e-12,
               ignore_attr = TRUE)
  expect_equal(fit$elbo, a$elbo, tolerance = 1e-13)
  # only the gaussian engine reads an uncentred X
  pm <- ns$glm_model(X, rpois(n, 2), d$weights, d$offset, poisson(), pri$coef, pri$precision, ctl)
  pm$uncentred_by <- unname(ce); pm$uncentred_int <- 1L
  expect_error(.Call(ns$C_glm_cavi, pm, init, integer(p), ctl), "gaussian")
  impl$uncentred_int <- 0L
  expect_error(.Call(ns$C_glm_cavi, impl, init, integer(p), ctl), "column index")
})
