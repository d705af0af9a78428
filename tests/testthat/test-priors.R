# Logistic regression and the Laplace prior (issue 3) against quadrature,
# Monte Carlo and glm().

test_that("logistic: JJ bound <= GVA ELBO <= log evidence by 2-D quadrature", {
  set.seed(21)
  n <- 200; x <- rnorm(n); y <- rbinom(n, 1, plogis(-0.3 + 1.1 * x))
  d <- data.frame(x, y)
  pri <- list(prior = normal(0, 2), prior_intercept = normal(0, 2))
  gva <- do.call(vb, c(list(y ~ x, data = d, family = binomial()), pri))
  jj <- do.call(vb, c(list(y ~ x, data = d, family = binomial(),
                           control = vb_control(binomial_method = "jj")), pri))
  X <- cbind(1, x)
  lz <- log_evidence_2d(function(b) sum(dbinom(y, 1, plogis(drop(X %*% b)), log = TRUE)),
                        function(b) sum(dnorm(b, 0, 2, log = TRUE)), c(0, 1))
  expect_lt(elbo(jj), elbo(gva))
  expect_lt(elbo(gva), lz)
  expect_lt(lz - elbo(gva), 0.02)
  expect_true(all(diff(jj$elbo_trace) >= -1e-10))
  # JJ under-states the slope's sd (Challis & Barber; algorithms.md 2.4)
  expect_lt(sqrt(vcov(jj)[2, 2]), sqrt(vcov(gva)[2, 2]))
})

test_that("logistic with wide priors approaches glm(binomial)", {
  set.seed(22)
  n <- 20000; x <- rnorm(n); z <- rnorm(n)
  y <- rbinom(n, 1, plogis(0.4 - 0.8 * x + 0.5 * z))
  fit <- vb(y ~ x + z, family = binomial(), prior = normal(0, 100), prior_intercept = normal(0, 100))
  g <- glm(y ~ x + z, family = binomial())
  sdg <- sqrt(diag(vcov(g)))
  expect_lt(max(abs(coef(fit) - coef(g)) / sdg), 0.02)
  expect_equal(sqrt(diag(vcov(fit))), sdg, tolerance = 0.01)
})

test_that("perfectly separated data still fit: the proper prior keeps q proper", {
  d <- data.frame(x = c(-3, -2, -1, 1, 2, 3), y = c(0, 0, 0, 1, 1, 1))
  fit <- vb(y ~ x, data = d, family = binomial())
  expect_true(fit$converged)
  expect_true(all(is.finite(coef(fit))) && all(is.finite(vcov(fit))))
  expect_gt(coef(fit)[["x"]], 1)
  expect_lt(coef(fit)[["x"]], 5)    # bounded by the normal(0, 1) prior
  expect_true(fit$separated)
  expect_output(print(fit), "separated")
  expect_false(isTRUE(vb(y ~ x, data = transform(d, y = c(0, 1, 0, 1, 0, 1)), family = binomial())$separated))
})

test_that("folded-normal expectations match Monte Carlo and finite differences", {
  set.seed(23)
  mu <- 0.4; s <- 0.7; b <- 0.5
  M <- c_model(matrix(1, 1, 1, dimnames = list(NULL, "x")), 0, family = poisson(),
               prior = laplace(0, b))
  M$weights <- 0   # isolate the prior term: no likelihood
  e <- .Call(vbayes:::C_glm_elbo, M, mu, matrix(s^2), c(1, 1))
  draws <- rnorm(2e6, mu, s)
  ref_mc <- mean(-log(2 * b) - abs(draws) / b)
  entropy <- 0.5 * log(2 * pi * exp(1) * s^2)
  expect_equal(e$elbo - entropy, ref_mc, tolerance = 3 * sd(abs(draws) / b) / sqrt(2e6) / abs(ref_mc))
  # E|beta| closed form and its derivatives against finite differences
  Eabs <- function(m, v) -(.Call(vbayes:::C_glm_elbo, M, m, matrix(v), c(1, 1))$elbo -
                             0.5 * log(2 * pi * exp(1) * v) + log(2 * b)) * b
  expect_equal(Eabs(mu, s^2), s * sqrt(2 / pi) * exp(-mu^2 / (2 * s^2)) + mu * (2 * pnorm(mu / s) - 1),
               tolerance = 1e-12)
  h <- 1e-6
  expect_equal((Eabs(mu + h, s^2) - Eabs(mu - h, s^2)) / (2 * h), 2 * pnorm(mu / s) - 1, tolerance = 1e-7)
  expect_equal((Eabs(mu, s^2 + h) - Eabs(mu, s^2 - h)) / (2 * h), dnorm(mu / s) / s, tolerance = 1e-6)
})

test_that("Laplace prior: ELBO below the quadrature evidence; null coefficients shrink to zero", {
  set.seed(24)
  n <- 150; x <- rnorm(n); y <- rpois(n, exp(1 + 0.25 * x))
  fit <- vb(y ~ x, family = poisson(), prior = laplace(0, 0.3), prior_intercept = laplace(1, 2))
  X <- cbind(1, x)
  lz <- log_evidence_2d(function(b) sum(dpois(y, exp(drop(X %*% b)), log = TRUE)),
                        function(b) -log(2 * 2) - abs(b[1] - 1) / 2 - log(2 * 0.3) - abs(b[2]) / 0.3,
                        c(1, 0.2))
  expect_lt(elbo(fit), lz)
  expect_lt(lz - elbo(fit), 0.05)

  set.seed(25)
  n <- 300; p <- 10
  X <- matrix(rnorm(n * p), n, p, dimnames = list(NULL, paste0("x", 1:p)))
  beta <- c(1, -0.8, 0.6, rep(0, p - 3))
  d <- data.frame(X, y = drop(X %*% beta) + rnorm(n))
  lap <- vb(y ~ ., data = d, prior = laplace(0, 0.05))
  nor <- vb(y ~ ., data = d, prior = normal(0, 10))
  null <- paste0("x", 4:10)
  # nulls: posterior mass concentrated near zero, more than under a vague prior
  expect_true(all(abs(coef(lap)[null]) < 0.05))
  expect_lt(sum(abs(coef(lap)[null])), 0.5 * sum(abs(coef(nor)[null])))
  z <- coef(lap)[c("x1", "x2", "x3")] / sqrt(diag(vcov(lap)))[c("x1", "x2", "x3")]
  expect_true(all(abs(z) > 5))
})
