# predict(), simulate(), draws(): intervals against exact references and
# coverage on simulated data.

test_that("credible intervals of the mean agree with lm's confidence intervals in the wide-prior limit", {
  set.seed(31)
  d <- data.frame(x = runif(400, -2, 2)); d$y <- 1 + 0.5 * d$x + rnorm(400, sd = 0.5)
  fit <- vb(y ~ x, data = d, prior = normal(0, 1e3), prior_intercept = normal(0, 1e3))
  nd <- data.frame(x = c(-1.5, 0, 1.7))
  p <- predict(fit, nd, interval = "credible")
  l <- predict(lm(y ~ x, data = d), nd, interval = "confidence")
  expect_equal(unname(p[, "fit"]), unname(l[, "fit"]), tolerance = 1e-6)
  # normal vs t quantile and E[tau] vs 1/s^2: agree to about 1%
  expect_equal(unname(p[, "upr"] - p[, "lwr"]), unname(l[, "upr"] - l[, "lwr"]), tolerance = 0.02)
  expect_equal(unname(predict(fit, nd)), unname(l[, "fit"]), tolerance = 1e-6)
})

test_that("poisson response predictions are the log-normal mean and quantiles", {
  set.seed(32)
  d <- data.frame(x = rnorm(100)); d$y <- rpois(100, exp(0.5 + 0.3 * d$x))
  fit <- vb(y ~ x, data = d, family = poisson())
  nd <- data.frame(x = c(-1, 2))
  X <- cbind(1, nd$x)
  m <- drop(X %*% coef(fit)); v <- rowSums((X %*% vcov(fit)) * X)
  r <- predict(fit, nd, type = "response", interval = "credible", level = 0.9)
  expect_equal(unname(r[, "fit"]), exp(m + v / 2), tolerance = 1e-12)
  expect_equal(unname(r[, "lwr"]), qlnorm(0.05, m, sqrt(v)), tolerance = 1e-12)
  expect_equal(unname(predict(fit, nd, type = "link")), m, tolerance = 1e-12)
  expect_equal(unname(fitted(fit)), unname(predict(fit, type = "response")), tolerance = 1e-12)
  expect_equal(residuals(fit, type = "response"), d$y - fitted(fit), ignore_attr = TRUE)
})

test_that("exposure is applied to new data as in the call", {
  set.seed(33)
  d <- data.frame(x = rnorm(200), dt = runif(200, 0.5, 2))
  d$y <- rpois(200, d$dt * exp(1 + 0.2 * d$x))
  a <- vb(y ~ x, data = d, family = poisson(), exposure = dt)
  nd <- data.frame(x = c(0, 1), dt = c(1, 3))
  expect_equal(unname(predict(a, nd)), unname(cbind(1, nd$x) %*% coef(a) + log(nd$dt))[, 1],
               tolerance = 1e-12)
  s <- vb(y ~ x, data = d, family = poisson(), exposure = 2)
  expect_equal(unname(predict(s, nd)), unname(cbind(1, nd$x) %*% coef(s) + log(2))[, 1],
               tolerance = 1e-12)
})

test_that("prediction intervals cover new observations at the nominal rate", {
  set.seed(34)
  n <- 300; m <- 2000
  x <- runif(n + m, -2, 2); y <- 2 - x + rnorm(n + m, sd = 1.5)
  d <- data.frame(x, y)
  fit <- vb(y ~ x, data = d[1:n, ])
  pi <- predict(fit, d[n + 1:m, ], interval = "prediction", level = 0.9)
  cover <- mean(d$y[n + 1:m] >= pi[, "lwr"] & d$y[n + 1:m] <= pi[, "upr"])
  # binomial sd of the coverage with m = 2000 is 0.0067; allow 4 sd
  expect_lt(abs(cover - 0.9), 4 * sqrt(0.9 * 0.1 / m))

  yp <- rpois(n + m, exp(1 + 0.5 * x))
  dp <- data.frame(x, y = yp)
  fp <- vb(y ~ x, data = dp[1:n, ], family = poisson())
  pp <- predict(fp, dp[n + 1:m, ], interval = "prediction", level = 0.9)
  inside <- dp$y[n + 1:m] >= pp[, "lwr"] & dp$y[n + 1:m] <= pp[, "upr"]
  # discrete predictive: closed intervals cover at least the nominal rate
  expect_gt(mean(inside), 0.9 - 4 * sqrt(0.9 * 0.1 / m))
})

test_that("draws() and simulate() reproduce q's moments", {
  set.seed(35)
  fit <- vb(mpg ~ wt + hp, data = mtcars)
  dr <- draws(fit, 20000)
  expect_equal(colMeans(dr)[1:3], coef(fit), tolerance = 0.01)
  expect_equal(cov(dr[, 1:3]), vcov(fit), tolerance = 0.05)
  A <- fit$tau[["shape"]]; B <- fit$tau[["rate"]]
  expect_equal(mean(dr[, "sigma"]^-2), A / B, tolerance = 0.02)
  s1 <- simulate(fit, nsim = 3, seed = 9); s2 <- simulate(fit, nsim = 3, seed = 9)
  expect_identical(s1, s2)
  expect_equal(dim(s1), c(32L, 3L))
  expect_error(draws(fit, 0), "positive whole")
  expect_error(predict(fit, interval = "credible", level = 2), "level")
})

test_that("se.fit: posterior sds of the prediction approach glm's se.fit with wide priors", {
  set.seed(126)
  n <- 5000
  d <- data.frame(x = rnorm(n)); d$y <- rpois(n, exp(0.5 + 0.3 * d$x)); d$b <- rbinom(n, 1, plogis(0.2 - 0.8 * d$x))
  nd <- data.frame(x = c(-1.5, 0, 2))
  for (cs in list(list(y ~ x, poisson()), list(b ~ x, binomial()))) {
    f <- vb(cs[[1]], data = d, family = cs[[2]], prior = normal(0, 1e3), prior_intercept = normal(0, 1e3))
    g <- glm(cs[[1]], data = d, family = cs[[2]])
    for (type in c("link", "response")) {
      pf <- predict(f, nd, type = type, se.fit = TRUE)
      pg <- predict(g, nd, type = type, se.fit = TRUE)
      expect_equal(unname(pf$se.fit), unname(pg$se.fit), tolerance = 5e-3)
      expect_equal(unname(pf$fit), unname(pg$fit), tolerance = 5e-3)
      expect_identical(pf$residual.scale, 1)
    }
  }
  # the response sd is exact for q: Monte Carlo of g^-1(eta)
  f <- vb(b ~ x, data = d[1:80, ], family = binomial())
  X <- cbind(1, nd$x)
  set.seed(127)
  B <- MASS::mvrnorm(2e5, coef(f), vcov(f))
  mc <- apply(plogis(X %*% t(B)), 1, sd)
  expect_equal(unname(predict(f, nd, type = "response", se.fit = TRUE)$se.fit), mc, tolerance = 5e-3)
  fg <- vb(mpg ~ wt, data = mtcars)
  p <- predict(fg, data.frame(wt = 3), interval = "credible", se.fit = TRUE)
  expect_equal(colnames(p$fit), c("fit", "lwr", "upr"))
  expect_equal(p$residual.scale, sigma(fg))
  expect_error(predict(fg, se.fit = NA), "TRUE or FALSE")
})
