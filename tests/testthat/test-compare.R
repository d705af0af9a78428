# compare_models(): the reference is the exact log evidence of the
# semi-conjugate Gaussian model y ~ N(Xb, 1/tau), b ~ N(m0, S0) independent of
# tau ~ Ga(a0, b0), by one-dimensional quadrature over tau of
# N(y; X m0, I/tau + X S0 X') Ga(tau; a0, b0)  (algorithms.md section 4).

exact_log_evidence <- function(X, y, m0, s, a0, b0) {
  n <- length(y)
  r <- y - drop(X %*% m0)
  XSX <- if (ncol(X)) X %*% (s^2 * t(X)) else matrix(0, n, n)
  logf <- function(lt) vapply(lt, function(l) {
    R <- chol(diag(exp(-l), n) + XSX)
    z <- backsolve(R, r, transpose = TRUE)
    -0.5 * n * log(2 * pi) - sum(log(diag(R))) - 0.5 * sum(z^2) +
      dgamma(exp(l), a0, b0, log = TRUE) + l  # + l: Jacobian of tau = e^l
  }, 0)
  grid <- seq(-12, 12, by = 0.05)
  lg <- logf(grid)
  top <- max(lg)
  mid <- grid[which.max(lg)]
  top + log(integrate(function(l) exp(logf(l) - top), mid - 6, mid + 6, rel.tol = 1e-10)$value)
}

set.seed(42)
n <- 40
d <- data.frame(x1 = rnorm(n), x2 = rnorm(n), x3 = rnorm(n))
d$y <- 1 + 0.8 * d$x1 + 0.3 * d$x2 + rnorm(n, sd = 0.7)
ctl <- vb_control(tol = 1e-12)
# explicit priors (the references below integrate over exactly these):
# normal(0, 1) slopes, normal(0, 10) intercept, gamma(1, 1) precision
vbc <- function(f) vb(f, data = d, control = ctl, prior = normal(0, 1),
                      prior_intercept = normal(0, 10), prior_precision = gamma_prior(1, 1))
fits <- list(const = vbc(y ~ 1), x1 = vbc(y ~ x1), x12 = vbc(y ~ x1 + x2),
             x123 = vbc(y ~ x1 + x2 + x3))

test_that("the quadrature evidence equals the multivariate t with no coefficients", {
  # X empty: y ~ t_{2 a0}(0, (b0 / a0) I) in closed form
  a0 <- 2; b0 <- 1.5
  lz <- lgamma(a0 + n / 2) - lgamma(a0) + a0 * log(b0) - (a0 + n / 2) * log(b0 + sum(d$y^2) / 2) -
    n / 2 * log(2 * pi)
  expect_equal(exact_log_evidence(matrix(0, n, 0), d$y, numeric(0), numeric(0), a0, b0), lz,
               tolerance = 1e-9)
})

test_that("on nested Gaussian models, ELBO differences rank the models as the exact evidences do", {
  ex <- vapply(fits, function(f) {
    X <- f$x
    s <- ifelse(colnames(X) == "(Intercept)", 10, 1)  # the fits' priors
    exact_log_evidence(X, d$y, rep(0, ncol(X)), s, 1, 1)
  }, 0)
  cm <- compare_models(fits)
  expect_identical(cm$model, names(fits))
  # names that begin with "elbo" do not make the list look like a fit
  expect_identical(compare_models(list(elbo_a = fits$x1, elbo_b = fits$x12))$model, c("elbo_a", "elbo_b"))
  expect_identical(order(cm$elbo), order(ex))
  expect_identical(cm$model[which.max(cm$delta)], names(which.max(ex)))
  # each ELBO is a lower bound, and a tight one for this near-conjugate model
  expect_true(all(cm$elbo < ex))
  expect_true(all(ex - cm$elbo < 0.1))
  # so the differences approximate the log Bayes factors
  expect_equal(cm$delta, unname(ex - max(ex)), tolerance = 0.05)
  # approximate posterior model probabilities are close to the exact ones
  pexact <- exp(ex - max(ex)) / sum(exp(ex - max(ex)))
  expect_equal(cm$prob, unname(pexact), tolerance = 0.05)
})

test_that("the table holds the reference ELBO terms; probabilities are their softmax with the prior", {
  # the ELBO of each fit, written from the formulas at its q (helper-elbo.R)
  ref <- t(vapply(fits, function(f) {
    p <- length(coef(f))
    ref_elbo_fit(f, list(type = rep("normal", p), location = rep(0, p),
                         scale = ifelse(names(coef(f)) == "(Intercept)", 10, 1)))
  }, numeric(3)))
  cm <- compare_models(a = fits$x1, b = fits$x12, c = fits$x123, prior_prob = c(2, 1, 1))
  expect_equal(cm$elbo, unname(ref[2:4, "elbo"]), tolerance = 1e-8)
  expect_equal(cm$loglik, unname(ref[2:4, "loglik"]), tolerance = 1e-8)
  expect_equal(cm$kl, unname(ref[2:4, "kl"]), tolerance = 1e-8)
  expect_equal(cm$delta, unname(ref[2:4, "elbo"] - max(ref[2:4, "elbo"])), tolerance = 1e-8)
  w <- exp(ref[2:4, "elbo"] - max(ref[2:4, "elbo"])) * c(0.5, 0.25, 0.25)
  expect_equal(cm$prob, unname(w / sum(w)), tolerance = 1e-8)
  expect_equal(cm$prior_prob, c(0.5, 0.25, 0.25))
  expect_identical(cm$model, c("a", "b", "c"))
  expect_equal(cm$npar, c(2L, 3L, 4L))
})

test_that("anova() on fits dispatches to compare_models() with the fits' names", {
  small <- fits$x1; big <- fits$x123
  a <- anova(small, big)
  expect_s3_class(a, "vb_comparison")
  expect_identical(a$model, c("small", "big"))
  expect_equal(a$elbo, c(elbo(small), elbo(big)))
  expect_equal(unclass(a), unclass(compare_models(small = small, big = big)))
  expect_error(anova(small), "at least two")
})

test_that("the print method names the preferred model and the caveat", {
  out <- capture.output(print(compare_models(fits)))
  expect_true(any(grepl("Preferred: x12", out)))
  expect_true(any(grepl("lower bound on its model's log evidence", out)))
})

test_that("compare_models() refuses fits to different data", {
  d2 <- d; d2$y[1] <- d2$y[1] + 1
  other <- vb(y ~ x1, data = d2)
  expect_error(compare_models(a = fits$x1, b = other), "different responses")
  fewer <- vb(y ~ x1, data = d, subset = -1)
  expect_error(compare_models(a = fits$x1, b = fewer), "different numbers of observations")
  # counts with different bin widths are different data
  set.seed(1)
  sp <- data.frame(x = rnorm(200))
  sp$y <- rpois(200, 0.01 * exp(3 + 0.5 * sp$x))
  p1 <- vb(y ~ x, data = sp, family = poisson(), exposure = 0.01)
  p2 <- vb(y ~ 1, data = sp, family = poisson(), exposure = 0.02)
  expect_error(compare_models(a = p1, b = p2), "different exposures")
  # an exposure given as an offset is the same model of the same data
  p3 <- vb(y ~ x + offset(log(rep(0.01, 200))), data = sp, family = poisson())
  expect_equal(compare_models(a = p1, b = p3)$elbo[2], elbo(p1), tolerance = 1e-8)
  p4 <- vb(y ~ x + offset(sp$x / 10), data = sp, family = poisson(), exposure = 0.01)
  expect_error(compare_models(a = p1, b = p4), "different offsets")
  sp$yy <- sp$y
  g <- vb(yy ~ x, data = sp)
  expect_error(compare_models(a = p1, b = g), "not comparable")
  # binomial trials are part of the data
  set.seed(2)
  bd <- data.frame(x = rnorm(30), s = rbinom(30, 5, 0.4))
  bd$f5 <- 5 - bd$s
  bd$f6 <- 6 - bd$s
  b5 <- vb(cbind(s, f5) ~ x, data = bd, family = binomial())
  b6 <- vb(cbind(s, f6) ~ x, data = bd, family = binomial())
  expect_error(compare_models(a = b5, b = b6), "binomial trials")
  expect_s3_class(compare_models(a = b5, b = vb(cbind(s, f5) ~ 1, data = bd, family = binomial())),
                  "vb_comparison")
  noy <- vb(y ~ x1, data = d, y = FALSE)
  expect_error(compare_models(a = fits$x1, b = noy), "refit with y = TRUE")
})

test_that("bad arguments get clear errors", {
  expect_error(compare_models(fits$x1), "at least two")
  expect_error(compare_models(a = fits$x1, a = fits$x12), "distinct names")
  expect_error(compare_models(a = fits$x1, b = 3), "not a fitted model")
  expect_error(compare_models(a = fits$x1, b = fits$x12, prior_prob = c(1, -1)), "prior_prob")
  expect_error(compare_models(a = fits$x1, b = fits$x12, prior_prob = 1), "prior_prob")
  expect_error(compare_models(a = fits$x1, b = fits$x12, iwae = NA), "iwae")
})

test_that("iwae = TRUE uses the tightest bound (largest K), which is closer to the exact evidence", {
  ex <- vapply(fits[c("x1", "x12")], function(f) {
    X <- f$x
    exact_log_evidence(X, d$y, rep(0, ncol(X)), ifelse(colnames(X) == "(Intercept)", 10, 1), 1, 1)
  }, 0)
  set.seed(7)
  cm <- compare_models(a = fits$x1, b = fits$x12, iwae = TRUE)
  set.seed(7)
  dd <- lapply(fits[c("x1", "x12")], vb_diagnose)
  expect_equal(attr(cm, "iwae_K"), c(100, 100))
  expect_equal(cm$iwae, vapply(dd, function(x) x$iwae[x$K == 100], 0), ignore_attr = TRUE)
  expect_equal(cm$iwae_se, vapply(dd, function(x) x$iwae_se[x$K == 100], 0), ignore_attr = TRUE)
  # L_100 within 4 se of the exact evidence, and tighter than the ELBO
  expect_true(all(abs(cm$iwae - ex) < 4 * cm$iwae_se + 1e-3))
  expect_true(all(ex - cm$iwae < ex - cm$elbo))
  expect_lt(max(abs(cm$delta_iwae - (ex - max(ex)))), 4 * sqrt(sum(cm$iwae_se^2)) + 1e-3)
  expect_output(print(cm), "importance-weighted evidence \\(L_K, K = 100\\) prefers")
  # a fit that vb_diagnose() cannot evaluate is named in the error
  expect_error(compare_models(a = fits$x1, b = vb(y ~ x1 + x2, data = d, x = FALSE), iwae = TRUE),
               "vb_diagnose\\(\\) on 'b'.*refit with x = TRUE")
})

test_that("compare_models() compares vb_lds() fits of different latent dimension", {
  p <- lds_test_params(k = 2, N = 4, seed = 3)
  set.seed(3)
  T <- 60
  z <- matrix(0, T, 2); z[1, ] <- p$m0
  for (t in 2:T) z[t, ] <- p$A %*% z[t - 1, ] + rnorm(2, sd = sqrt(0.12))
  y <- z %*% t(p$C) + rep(p$d, each = T) + matrix(rnorm(4 * T, sd = 0.5), T)
  ctl <- vb_control(maxit = 300, tol = 1e-10, quiet = TRUE)
  f1 <- suppressWarnings(vb_lds(y, 1, control = ctl))
  f2 <- suppressWarnings(vb_lds(y, 2, control = ctl))
  cm <- compare_models(k1 = f1, k2 = f2)
  # the structured q is the exact posterior of the latents at the fitted
  # parameters, so each ELBO is the dense Kalman log-likelihood there
  ref <- c(lds_dense_loglik(f1$params, y), lds_dense_loglik(f2$params, y))
  expect_equal(cm$elbo, ref, tolerance = 1e-6)
  expect_equal(cm$prob, exp(ref - max(ref)) / sum(exp(ref - max(ref))), tolerance = 1e-6)
  expect_identical(cm$model, c("k1", "k2"))
  # different recordings are refused, also when only the shape differs
  y2 <- y; y2[5, 2] <- y2[5, 2] + 1
  g <- suppressWarnings(vb_lds(y2, 1, control = vb_control(maxit = 5, quiet = TRUE)))
  expect_error(compare_models(k1 = f1, other = g), "different responses")
  h <- suppressWarnings(vb_lds(list(y[1:30, ], y[31:60, ]), 1, control = vb_control(maxit = 5, quiet = TRUE)))
  expect_error(compare_models(k1 = f1, split = h), "differently shaped")
  glm_fit <- vb(y ~ 1, data = data.frame(y = y[, 1]))
  expect_error(compare_models(k1 = f1, glm = glm_fit), "different numbers of observations")
})

test_that("fits of a log density are compared with a note that their data were not checked", {
  set.seed(9)
  mk <- function(s) {
    f <- vb_density(function(th) sum(dnorm(th, 0, s, log = TRUE)), c(a = 0.3),
                    control = vb_control(quiet = TRUE, sgvb_maxit = 3000))
    class(f) <- c("vbdensity", "vb_posterior")  # the class once vb_density() gives it
    f
  }
  cm <- compare_models(narrow = mk(1), wide = mk(2))
  expect_identical(attr(cm, "unchecked"), c("narrow", "wide"))
  expect_output(print(cm), "no data .* not checked")
  # normalised Gaussian targets: both ELBOs are near log Z = 0
  expect_true(all(abs(cm$elbo) < 0.05))
  expect_identical(compare_models(a = fits$x1, b = fits$x12)$model, c("a", "b"))
  expect_length(attr(compare_models(a = fits$x1, b = fits$x12), "unchecked"), 0L)
})
