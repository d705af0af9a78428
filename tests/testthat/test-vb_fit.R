# The C GVA engine (src/glm.c) against closed forms, finite differences,
# quadrature evidences and glm()/lm() in the wide-prior limit.

sim_poisson <- function(n = 300, rho = 0.8, seed = 1) {
  set.seed(seed)
  x1 <- rnorm(n); x2 <- rho * x1 + sqrt(1 - rho^2) * rnorm(n)
  y <- rpois(n, 0.01 * exp(3 + 0.4 * x1 - 0.3 * x2))
  data.frame(y, x1, x2)
}

test_that("C ELBO equals the closed form and its gradient matches finite differences", {
  d <- sim_poisson(60)
  X <- cbind(1, d$x1, d$x2); off <- rep(log(0.01), 60)
  for (pr in list(normal(0.2, 1.5), laplace(0.1, 0.7))) {
    M <- c_model(X, d$y, off = off, prior = pr, prior_intercept = normal(0, 3))
    mu <- c(2.5, 0.3, -0.2)
    A <- matrix(c(0.04, 0.01, 0, 0.01, 0.03, 0.005, 0, 0.005, 0.05), 3)
    e <- .Call(vbayes:::C_glm_elbo, M, mu, A, c(1, 1))
    if (pr$dist == "normal")
      expect_equal(e$elbo, poisson_elbo_R(X, d$y, off, mu, A, c(0, 0.2, 0.2), c(3, 1.5, 1.5)),
                   tolerance = 1e-12)
    f <- function(mu, S) .Call(vbayes:::C_glm_elbo, M, mu, S, c(1, 1))$elbo
    h <- 1e-5
    gm <- vapply(1:3, function(j) {
      ej <- replace(numeric(3), j, h); (f(mu + ej, A) - f(mu - ej, A)) / (2 * h)
    }, 0)
    expect_equal(e$grad_mu, gm, tolerance = 1e-7)
    for (ij in list(c(1, 1), c(2, 1), c(3, 2), c(3, 3))) {
      E <- matrix(0, 3, 3); E[ij[1], ij[2]] <- E[ij[2], ij[1]] <- h
      num <- (f(mu, A + E) - f(mu, A - E)) / (2 * h)
      k <- if (ij[1] == ij[2]) 1 else 2
      expect_equal(k * e$grad_Sigma[ij[1], ij[2]], num, tolerance = 1e-6)
    }
  }
})

test_that("log joint gradient matches finite differences for every family and prior", {
  set.seed(3)
  X <- cbind(1, rnorm(20)); th <- c(0.3, -0.4)
  cases <- list(list(poisson(), rpois(20, 2), normal(0, 1)),
                list(binomial(), rbinom(20, 1, 0.4), laplace(0, 1)),
                list(gaussian(), rnorm(20), normal(1, 2)))
  for (cs in cases) {
    M <- c_model(X, cs[[2]], family = cs[[1]], prior = cs[[3]])
    theta <- if (cs[[1]]$family == "gaussian") c(th, log(1.7)) else th
    lj <- .Call(vbayes:::C_glm_log_joint, M, matrix(theta))
    f <- function(t) .Call(vbayes:::C_glm_log_joint, M, matrix(t))$value
    num <- vapply(seq_along(theta), function(j) {
      e <- replace(numeric(length(theta)), j, 1e-6); (f(theta + e) - f(theta - e)) / 2e-6
    }, 0)
    expect_equal(drop(lj$gradient), num, tolerance = 1e-6)
  }
  # value against dpois/dnorm by hand
  y <- rpois(20, 2)
  M <- c_model(X, y, prior = normal(0, 2), prior_intercept = normal(0, 2))
  ref <- sum(dpois(y, exp(drop(X %*% th)), log = TRUE)) + sum(dnorm(th, 0, 2, log = TRUE))
  expect_equal(.Call(vbayes:::C_glm_log_joint, M, matrix(th))$value, ref, tolerance = 1e-12)
})

test_that("Poisson ELBO is below the quadrature log evidence, and close to it", {
  d <- sim_poisson(300, rho = 0)
  fit <- vb(y ~ x1, data = d, family = poisson(), exposure = 0.01,
            prior = normal(0, 1), prior_intercept = normal(0, 5))
  X <- cbind(1, d$x1)
  lz <- log_evidence_2d(function(b) sum(dpois(d$y, 0.01 * exp(drop(X %*% b)), log = TRUE)),
                        function(b) dnorm(b[1], 0, 5, log = TRUE) + dnorm(b[2], 0, 1, log = TRUE),
                        c(3, 0))
  expect_lt(elbo(fit), lz)
  expect_lt(lz - elbo(fit), 0.02)       # full-rank GVA gap is ~5e-3 nats here
  mf <- update(fit, approx = "meanfield")
  expect_lt(elbo(mf), elbo(fit) + 1e-10)
})

test_that("Poisson: richer families never have a lower ELBO; traces never decrease", {
  d <- sim_poisson(400, rho = 0.9)
  fits <- lapply(c("meanfield", "block", "fullrank"), function(a)
    vb(y ~ x1 + x2, data = d, family = poisson(), exposure = 0.01, approx = a,
       control = vb_control(blocks = list("(Intercept)", c("x1", "x2")))))
  e <- vapply(fits, elbo, 0)
  expect_true(e[1] < e[2] && e[2] < e[3])
  for (f in fits) {
    tr <- f$elbo_trace
    expect_true(all(diff(tr) >= -1e-12 * abs(tr[-1])))
    expect_true(f$converged)
  }
  # meanfield under-states the slopes' sd on a correlated design
  expect_true(all(sqrt(diag(vcov(fits[[1]])))[2:3] < sqrt(diag(vcov(fits[[3]])))[2:3]))
})

test_that("block with one block is fullrank; singleton blocks are meanfield", {
  d <- sim_poisson(200, rho = 0.7)
  f <- function(a, b) vb(y ~ x1 + x2, data = d, family = poisson(), exposure = 0.01,
                         approx = a, control = vb_control(blocks = b, tol = 1e-12))
  full <- f("fullrank", NULL); mf <- f("meanfield", NULL)
  one <- f("block", list(c("(Intercept)", "x1", "x2")))
  single <- f("block", 1:3)
  expect_equal(elbo(one), elbo(full), tolerance = 1e-10)
  expect_equal(coef(one), coef(full), tolerance = 1e-8)
  expect_equal(elbo(single), elbo(mf), tolerance = 1e-10)
  expect_equal(vcov(single), vcov(mf), tolerance = 1e-8)
})

test_that("wide priors: Poisson posterior approaches glm(), vcov approaches vcov(glm)", {
  set.seed(11)
  n <- 20000; x <- rnorm(n); z <- rnorm(n)
  y <- rpois(n, exp(0.5 + 0.3 * x - 0.2 * z))
  fit <- vb(y ~ x + z, family = poisson(), prior = normal(0, 100),
            prior_intercept = normal(0, 100))
  g <- glm(y ~ x + z, family = poisson())
  sdg <- sqrt(diag(vcov(g)))
  expect_lt(max(abs(coef(fit) - coef(g)) / sdg), 0.02)
  expect_equal(sqrt(diag(vcov(fit))), sdg, tolerance = 0.01)
})

test_that("gaussian: ELBO below the exact evidence (quadrature over tau); means -> lm()", {
  set.seed(5)
  n <- 40; X <- cbind(1, rnorm(n), rnorm(n))
  y <- drop(X %*% c(1, 0.5, -0.7)) + rnorm(n, sd = 0.8)
  d <- data.frame(y, x1 = X[, 2], x2 = X[, 3])
  fit <- vb(y ~ x1 + x2, data = d, prior = normal(0, 1), prior_intercept = normal(0, 2),
            prior_precision = gamma_prior(2, 1))
  lz <- gaussian_log_evidence(X, y, c(0, 0, 0), c(2, 1, 1), 2, 1)
  expect_lt(elbo(fit), lz)
  expect_lt(lz - elbo(fit), 0.1)
  # ELBO at the fit by the independent closed-form evaluator equals the engine's
  M <- c_model(X, y, family = gaussian(), prior = normal(0, 1), prior_intercept = normal(0, 2))
  M$tau_prior <- c(2, 1)
  expect_equal(.Call(vbayes:::C_glm_elbo, M, unname(coef(fit)), unname(vcov(fit)),
                     unname(fit$tau))$elbo, elbo(fit), tolerance = 1e-10)
  wide <- vb(y ~ x1 + x2, data = d, prior = normal(0, 1e4), prior_intercept = normal(0, 1e4))
  expect_equal(coef(wide), coef(lm(y ~ x1 + x2, data = d)), tolerance = 1e-6)
})

test_that("exposure = Delta gives the same fit as offset(log(Delta))", {
  d <- sim_poisson(200)
  d$delta <- runif(200, 0.005, 0.02)
  a <- vb(y ~ x1, data = d, family = poisson(), exposure = delta)
  b <- vb(y ~ x1 + offset(log(delta)), data = d, family = poisson())
  expect_equal(coef(a), coef(b), tolerance = 1e-10)
  expect_equal(elbo(a), elbo(b), tolerance = 1e-10)
  s <- vb(y ~ x1, data = d, family = poisson(), exposure = 0.01)
  o <- vb(y ~ x1, data = d, family = poisson(), offset = rep(log(0.01), 200))
  expect_equal(coef(s), coef(o), tolerance = 1e-10)
})

test_that("the block family defaults to one block per formula term", {
  set.seed(9)
  d <- data.frame(x1 = rnorm(100), x2 = rnorm(100))
  d$y <- rpois(100, exp(0.5 + 0.3 * d$x1))
  fit <- vb(y ~ x1 + poly(x2, 3), data = d, family = poisson(), approx = "block",
            prior = normal(0, 1), prior_intercept = normal(0, 10))
  expect_equal(fit$blocks, c(0L, 1L, 2L, 2L, 2L))
  # within a term the covariance is kept, across terms it is zero
  expect_true(all(vcov(fit)[3:5, 3:5][upper.tri(diag(3))] != 0))
  expect_true(all(vcov(fit)[1:2, 3:5] == 0))
  # the default intercept prior is on the centred predictors: the blocks
  # factorise (alpha, beta), so only the intercept picks up covariances
  fd <- vb(y ~ x1 + poly(x2, 3), data = d, family = poisson(), approx = "block")
  expect_true(all(vcov(fd)[2, 3:5] == 0))
  xbar <- colMeans(model.matrix(fd)[, -1])
  expect_equal(unname(vcov(fd)[1, 2:5]), -unname(drop(vcov(fd)[2:5, 2:5] %*% xbar)), tolerance = 1e-10)
})

test_that("joint mean steps reach the coordinate-ascent fixed point in far fewer sweeps", {
  set.seed(12)
  n <- 3000; z <- rnorm(n)
  X <- sapply(1:5, function(k) z + 0.1 * rnorm(n))   # pairwise correlation ~0.99
  d <- data.frame(X, y = rpois(n, exp(0.2 + 0.1 * z)))
  f <- function(jm, a) vb(y ~ ., data = d, family = poisson(), approx = a,
                          prior = normal(0, 1), prior_intercept = normal(0, 10),
                          control = vb_control(joint_means = jm, maxit = 1e5, tol = 1e-13))
  for (a in c("meanfield", "block")) {
    slow <- f(0, a); fast <- f(500, a)
    expect_equal(elbo(fast), elbo(slow), tolerance = 1e-9)
    # coordinate ascent creeps: agreement in posterior-sd units
    expect_lt(max(abs(coef(fast) - coef(slow)) / sqrt(diag(vcov(fast)))), 0.01)
    expect_lt(fast$iterations, slow$iterations / 5)
    # the fast fit is a stationary point: the ELBO's gradient in mu vanishes
    M <- c_model(cbind(1, X), d$y)
    M$prior_scale[1] <- 10
    g <- .Call(vbayes:::C_glm_elbo, M, unname(coef(fast)), unname(vcov(fast)), c(1, 1))$grad_mu
    expect_lt(max(abs(g)), 1e-6 * n)
    expect_true(all(diff(fast$elbo_trace) >= -1e-12 * abs(fast$elbo_trace[-1])))
  }
})
