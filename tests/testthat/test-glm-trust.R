# Issue 10 for the GLM engines: no false convergence, accurate expectations
# for wide q, inputs the core cannot evaluate refused at the boundary.

sep_data <- function() {
  set.seed(1)
  x <- rnorm(50)
  data.frame(x = x, y = as.numeric(x > 0))
}

# E log p(y | eta) for the binomial, eta ~ N(m, v), by adaptive quadrature
# split at the kink of softplus: a reference independent of src/expect.c.
ref_binom_loglik <- function(y, w, m, v) {
  sp <- function(x) ifelse(x > 0, x + log1p(exp(-x)), log1p(exp(x)))
  es <- mapply(function(mt, vt) {
    s <- sqrt(vt)
    f <- function(x) sp(x) * dnorm(x, mt, s)
    pts <- sort(unique(c(mt - 40 * s, mt + 40 * s, if (abs(mt) < 40 * s) 0)))
    sum(vapply(seq_len(length(pts) - 1L), function(k)
      integrate(f, pts[k], pts[k + 1L], rel.tol = 1e-12, abs.tol = 0, subdivisions = 1000L)$value, 0))
  }, m, v)
  sum(y * m - w * es + lchoose(w, y))
}

test_that("binomial expectations are exact for wide q (separated data, wide priors)", {
  d <- sep_data()
  fit <- vb(y ~ x, d, family = binomial(), prior = normal(0, 1e6),
            prior_intercept = normal(0, 1e6), control = vb_control(quiet = TRUE))
  # the fitted q puts sd(eta) in the thousands: a fixed Gauss-Hermite rule is nats off there
  expect_gt(max(sqrt(fit$linear.predictors.var)), 100)
  ref <- ref_binom_loglik(d$y, 1, fit$linear.predictors, fit$linear.predictors.var)
  # y m - E softplus cancels terms of size |m| ~ 1e4: compare on that scale
  expect_lt(abs(fit$elbo_terms[["loglik"]] - ref), 1e-12 * sum(abs(fit$linear.predictors)))
  # and for a narrow q, where Gauss-Hermite is used
  set.seed(2)
  d2 <- data.frame(x = rnorm(80)); d2$y <- rbinom(80, 1, plogis(0.5 + d2$x))
  f2 <- vb(y ~ x, d2, family = binomial(), control = vb_control(quiet = TRUE))
  ref2 <- ref_binom_loglik(d2$y, 1, f2$linear.predictors, f2$linear.predictors.var)
  expect_equal(f2$elbo_terms[["loglik"]], ref2, tolerance = 1e-9)
})

test_that("separated logistic data: fullrank reaches the optimum, above meanfield", {
  d <- sep_data()
  args <- list(y ~ x, d, family = binomial(), prior = normal(0, 1e6), prior_intercept = normal(0, 1e6))
  fr <- do.call(vb, c(args, approx = "fullrank", control = list(vb_control(quiet = TRUE))))
  mf <- do.call(vb, c(args, approx = "meanfield", control = list(vb_control(quiet = TRUE))))
  expect_true(fr$converged)
  expect_gte(fr$elbo, mf$elbo - 1e-8)
  # Reference optimum: a generic quasi-Newton search over (mu, log-Cholesky)
  # of the closed-form ELBO, started from the meanfield q.
  M <- vbayes:::fit_model(fr)
  E <- function(par) {
    L <- matrix(c(exp(par[3]), par[4], 0, exp(par[5])), 2)
    .Call(vbayes:::C_glm_elbo, M, par[1:2], tcrossprod(L), c(1, 1))$elbo
  }
  s <- sqrt(diag(vcov(mf)))
  start <- c(coef(mf), log(s[1]), 0, log(s[2]))
  opt <- optim(start, function(p) -E(p), method = "BFGS",
               control = list(maxit = 5000, reltol = 1e-14, parscale = c(abs(coef(mf)), 1, s[2], 1)))
  expect_gte(fr$elbo, -opt$value - 1e-6)
  expect_lt(abs(fr$elbo - (-opt$value)), 1e-3)
})

test_that("a fit that runs out of iterations says so, even when quiet", {
  d <- sep_data()
  expect_warning(f <- vb(y ~ x, d, family = binomial(), prior = normal(0, 1e6),
                         prior_intercept = normal(0, 1e6),
                         control = vb_control(maxit = 3, quiet = TRUE)), "not converged")
  expect_false(f$converged)
  expect_identical(f$status, 1L)
  expect_length(f$elbo_trace, 4L)
  expect_true(all(diff(f$elbo_trace) >= 0))
})

test_that("y ~ 0 fits as in glm: the ELBO is the exact evidence of the noise model", {
  d <- data.frame(y = c(1.2, 0.3, 2.2, 1.1, -0.4))
  f <- vb(y ~ 0, d, prior_precision = gamma_prior(1, 1), control = vb_control(quiet = TRUE))
  expect_length(coef(f), 0L)
  # y_i ~ N(0, 1/tau), tau ~ Gamma(1, 1): q(tau) is the exact posterior
  n <- 5; a0 <- 1; b0 <- 1
  logev <- -n / 2 * log(2 * pi) + a0 * log(b0) + lgamma(a0 + n / 2) - lgamma(a0) -
    (a0 + n / 2) * log(b0 + sum(d$y^2) / 2)
  expect_equal(elbo(f), logev, tolerance = 1e-10)
  expect_true(f$converged)
  p <- vb(c(2, 0, 3, 1, 1) ~ 0, d, family = poisson(), control = vb_control(quiet = TRUE))
  expect_equal(elbo(p), sum(dpois(c(2, 0, 3, 1, 1), 1, log = TRUE)), tolerance = 1e-12)
})

test_that("vb_fit() checks what vb() checks", {
  X <- cbind("(Intercept)" = 1, x = 1:6)
  expect_error(vb_fit(X, c(0, 1, 2.5, 1, 0, 3), family = poisson()), "whole counts")
  expect_error(vb_fit(X, c(0, 1, 2, 1, 0, 3), family = poisson(), weights = letters[1:6]), "numeric")
  expect_error(vb_fit(X, c(0, 1, 1, 1, 0, 1), family = binomial(), weights = c(1, 1.5, 1, 1, 1, 1)),
               "whole numbers")
  expect_error(vb_fit(X, c(0, 1, 3, 1, 0, 1), family = binomial(), weights = rep(2, 6)), "between 0")
  expect_error(vb_fit(X, c(0, 1, 1, 1, 0, 1), family = binomial(), weights = rep(0, 6)), "every weight is zero")
  expect_error(vb_fit(X, rnorm(6), exposure = 2), "poisson")
  expect_error(vb_fit(X, c(0, 1, 2, 1, 0, 3), family = poisson(), exposure = c(1, 2)), "length 2")
  expect_error(vb_fit(X, c(0, 1, 2, 1, 0, 3), family = poisson(), exposure = c(1, 1, 1, 1, 1, NA)), "NA")
  # a plain list is a control
  f <- vb_fit(X, c(0, 1, 2, 1, 0, 3), family = poisson(), control = list(maxit = 200, quiet = TRUE))
  g <- vb_fit(X, c(0, 1, 2, 1, 0, 3), family = poisson(), control = vb_control(maxit = 200, quiet = TRUE))
  expect_equal(coef(f), coef(g))
  expect_error(vb_fit(X, c(0, 1, 2, 1, 0, 3), control = list(1, 2)), "named list")
})

test_that("inputs the core cannot evaluate are refused at the R boundary", {
  expect_error(normal(0, 1e-200), "too extreme")
  expect_error(laplace(0, 1e200), "too extreme")
  expect_error(normal(1e300, 1), "too large")
  expect_error(gamma_prior(1e-170, 1), "too extreme")
  expect_error(vb_control(maxit = 1e10), "at most")
  expect_error(vb_control(maxit = .Machine$integer.max), "at most")
  expect_error(vb_control(gh_nodes = NA_integer_), "gh_nodes")
  # a prior edited after construction is re-checked
  pr <- normal(0, 1); pr$scale <- 1e-200
  expect_error(vb(mpg ~ wt, mtcars, prior = pr), "too extreme")
})

test_that("separation is found from a certificate, in any locale, without refitting", {
  d <- sep_data()
  expect_true(vbayes:::is_separated(cbind("(Intercept)" = 1, x = d$x), d$y, rep(1, 50)))
  # quasi-complete: one factor level has only failures
  set.seed(3)
  g <- factor(rep(c("a", "b", "c"), each = 20)); y <- rbinom(60, 1, 0.5); y[g == "c"] <- 0
  X <- model.matrix(~ g)
  expect_true(vbayes:::is_separated(X, y, rep(1, 60)))
  y2 <- y; y2[41] <- 1
  expect_false(vbayes:::is_separated(X, y2, rep(1, 60)))
  # glm agrees on both
  expect_true(suppressWarnings(max(abs(coef(glm(y ~ g, family = binomial()))))) > 10)
  expect_lt(max(abs(coef(glm(y2 ~ g, family = binomial())))), 10)
})

test_that("CAVI stops within a second of Ctrl-C, with an error saying so", {
  skip_on_cran()
  skip_if_not(.Platform$OS.type == "unix")
  set.seed(4)
  n <- 40000; p <- 150
  X <- cbind(1, matrix(rnorm(n * (p - 1)), n))
  y <- rbinom(n, 1, plogis(X %*% rnorm(p, 0, 0.1)))
  lat <- interrupt_latency(vb_fit(X, y, family = binomial(), control = vb_control(tol = 1e-300, maxit = 1e6, quiet = TRUE)), after = 1.5)
  expect_match(attr(lat, "how"), "interrupt")
  expect_lt(lat, 1)
})

test_that("fullrank >= block >= meanfield on every family, prior and scale tried", {
  q <- vb_control(quiet = TRUE, maxit = 2000)
  for (seed in 1:4) {
    set.seed(seed)
    n <- c(30, 60, 200, 40)[seed]
    d <- data.frame(a = rnorm(n), b = rnorm(n))
    d$c <- d$a + rnorm(n, sd = 0.3) # correlated with a
    eta <- 0.5 + d$a - d$c
    ys <- list(gaussian = eta + rnorm(n), poisson = rpois(n, exp(eta / 2)),
               binomial = if (seed == 4) as.numeric(d$a > 0) else rbinom(n, 1, plogis(eta)))
    for (fam in names(ys)) for (pr in list(normal(0, 1), laplace(0, 0.5), normal(0, 1e4))) {
      d$y <- ys[[fam]]
      el <- vapply(c("fullrank", "block", "meanfield"), function(a)
        vb(y ~ a + b + c, d, family = get(fam)(), prior = pr, prior_intercept = pr, approx = a,
           control = vb_control(quiet = TRUE, maxit = 2000, blocks = list(c("(Intercept)", "a"), c("b", "c"))))$elbo, 0)
      lab <- sprintf("seed %d, %s, %s(%g)", seed, fam, pr$dist, pr$scale)
      expect_gte(el[["fullrank"]], el[["block"]] - 1e-7 * abs(el[["block"]]), label = lab)
      expect_gte(el[["block"]], el[["meanfield"]] - 1e-7 * abs(el[["meanfield"]]), label = lab)
    }
  }
})
