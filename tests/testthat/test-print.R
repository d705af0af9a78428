# Snapshot tests of the print/summary layouts and of the main error
# messages (tests/testthat/_snaps/print.md).  The fits are deterministic
# (CAVI; draws after set.seed()); elapsed times are masked.

mask_time <- function(x) sub(", [0-9.e+-]+ s$", ", <time> s", x)

test_that("print and summary of a GLM fit", {
  fit <- vb(mpg ~ wt + hp, data = mtcars)
  expect_snapshot(print(fit), transform = mask_time)
  expect_snapshot(summary(fit))
  expect_snapshot(print(prior_summary(fit)))
  expect_snapshot(print(prior_summary(vb(mpg ~ wt, data = mtcars, prior = normal(0, 2),
                                         prior_intercept = normal(10, 5)))))
  set.seed(1)
  d <- data.frame(x = rnorm(40))
  d$y <- rpois(40, exp(0.5 + 0.3 * d$x))
  pf <- vb(y ~ x, data = d, family = poisson(), approx = "meanfield")
  expect_snapshot(print(pf), transform = mask_time)
  expect_snapshot(summary(pf, level = 0.9))
  # how a fit that stopped early says so (status 1: iteration limit)
  bad <- fit
  bad$converged <- FALSE
  bad$status <- 1L
  expect_snapshot(print(bad), transform = mask_time)
})

test_that("print of a posterior class without a print method of its own", {
  post <- structure(list(coefficients = c(a = 0.5, b = -1.25),
                         vcov = matrix(c(0.04, 0.01, 0.01, 0.09), 2), elbo = -12.3456,
                         elbo_terms = c(elbo = -12.3456, loglik = -10, kl = 2.3456),
                         converged = TRUE, iterations = 7L, status = 0L, approx = "fullrank"),
                    class = c("test_posterior", "vb_posterior"))
  expect_snapshot(print(post))
})

test_that("print of a model comparison, a diagnosis and a group selection", {
  small <- vb(mpg ~ wt, data = mtcars)
  big <- vb(mpg ~ wt + hp + qsec, data = mtcars)
  expect_snapshot(print(compare_models(small = small, big = big)))
  set.seed(2)
  expect_snapshot(print(vb_diagnose(small, S = 1000, K = c(1, 10, 100))))
  lme <- matrix(rep(c(-10.3, -9.7), each = 5), 5, 2, dimnames = list(NULL, c("m1", "m2")))
  expect_snapshot(print(bms(lme)))
  expect_snapshot(print(summary(bms(cbind(lme, m3 = -10.5), families = c("a", "a", "b")))))
})

test_that("main error messages", {
  d <- data.frame(y = c(0, 1, 2, 3), x = c(1, 2, 3, 4))
  expect_snapshot(error = TRUE, {
    vb(y ~ x, data = d, family = Gamma())
    vb(y ~ x, data = transform(d, y = c(0, 1, 1.5, 2)), family = poisson())
    vb(y ~ x, data = d, prior = normal(0, -1))
    vb(y ~ x, data = d, exposure = 0.1)
    vb_control(maxit = 0)
    vb_control(tol = -1)
    vb(y ~ x, data = d, prior = list(dist = "t", df = 3, location = 0, scale = 1, autoscale = FALSE))
    vb(y ~ x, data = d, prior = gamma_prior(1, 1))
    vb(y ~ x, data = d, prior_precision = normal(0, 1))
    df.residual(vb(y ~ x, data = d))
    AIC(vb(y ~ x, data = d))
  })
  small <- vb(mpg ~ wt, data = mtcars)
  expect_snapshot(error = TRUE, {
    compare_models(small)
    compare_models(a = small, b = 3)
    compare_models(a = small, b = small, prior_prob = c(1, -1))
    compare_models(a = small, b = vb(mpg ~ wt, data = mtcars, subset = -1))
    compare_models(a = small, b = vb(mpg ~ wt, data = mtcars, y = FALSE))
  })
  expect_snapshot(error = TRUE, {
    bms(matrix(c(-1, NA, -2, -3), 2))
    bms(matrix(-1, 4, 1))
    bms(c(-1, -2))
    bms(matrix(-1, 3, 2), alpha0 = 0)
    bms(matrix(-1, 3, 2), alpha0 = 1e308)
    bms(matrix(-1, 3, 2), alpah0 = 2)
  })
})
