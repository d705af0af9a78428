# The formula front end: glm-like handling of data, factors, weights,
# subset, na.action, offsets; and clear errors for bad input.

test_that("factors, interactions, subset, weights and na.action behave as in glm()", {
  set.seed(2)
  d <- data.frame(g = factor(sample(c("a", "b", "c"), 500, TRUE)), x = rnorm(500))
  d$y <- rpois(500, exp(0.3 + 0.4 * d$x + c(a = 0, b = 0.5, c = -0.4)[d$g]))
  d$x[3] <- NA
  w <- runif(500, 0.5, 2)
  wide <- list(prior = normal(0, 1000), prior_intercept = normal(0, 1000))
  fit <- do.call(vb, c(list(y ~ g * x, data = d, family = poisson(), weights = w,
                            subset = d$x > -2), wide))
  g <- glm(y ~ g * x, data = d, family = poisson(), weights = w, subset = d$x > -2)
  expect_equal(names(coef(fit)), names(coef(g)))
  expect_lt(max(abs(coef(fit) - coef(g)) / sqrt(diag(vcov(g)))), 0.05)
  expect_equal(nobs(fit), nobs(g))
  expect_equal(unname(fit$na.action), unname(g$na.action))
  expect_equal(formula(fit), y ~ g * x)
  expect_error(vb(y ~ g * x, data = d, family = poisson(), na.action = na.fail), "missing")
})

test_that("binomial: 0/1, factor, proportions with weights and cbind() give one posterior", {
  set.seed(4)
  grp <- data.frame(x = seq(-1, 1, length.out = 20), n = sample(3:8, 20, TRUE))
  grp$s <- rbinom(20, grp$n, plogis(0.2 + grp$x))
  long <- grp[rep(seq_len(20), grp$n), ]
  long$y <- unlist(lapply(seq_len(20), function(i) rep(c(1, 0), c(grp$s[i], grp$n[i] - grp$s[i]))))
  # the ELBOs differ by a constant, so one relative tol can stop them an
  # iteration apart: compare the optima at a tight tol
  ct <- vb_control(tol = 1e-13)
  a <- vb(cbind(s, n - s) ~ x, data = grp, family = binomial(), control = ct)
  b <- vb(y ~ x, data = long, family = binomial(), control = ct)
  c <- vb(s / n ~ x, data = grp, weights = n, family = binomial(), control = ct)
  f <- vb(factor(y, labels = c("no", "yes")) ~ x, data = long, family = binomial(), control = ct)
  expect_equal(coef(a), coef(b), tolerance = 1e-8)
  expect_equal(vcov(a), vcov(b), tolerance = 1e-8)
  expect_equal(coef(a), coef(c), tolerance = 1e-10)
  expect_equal(coef(b), coef(f), tolerance = 1e-10)
  # the evidences differ only by the multinomial constant sum log choose(n, s)
  expect_equal(elbo(a) - elbo(b), sum(lchoose(grp$n, grp$s)), tolerance = 1e-8)
})

test_that("rank-deficient designs fit (the prior identifies them) with a note", {
  set.seed(8)
  d <- data.frame(x = rnorm(50)); d$x2 <- 2 * d$x; d$y <- rpois(50, exp(1 + 0.3 * d$x))
  fit <- vb(y ~ x + x2, data = d, family = poisson(), prior = normal(0, 1))
  expect_true(fit$converged)
  expect_equal(fit$rank, 2L)
  expect_output(print(fit), "rank deficient")
  # along the null direction (2, -1)/sqrt(5) the posterior sd is the prior's (1)
  u <- c(0, 2, -1) / sqrt(5)
  expect_equal(drop(t(u) %*% vcov(fit) %*% u), 1, tolerance = 1e-6)
})

test_that("bad input gives clear errors", {
  d <- data.frame(y = c(0, 1, 2, 3), x = c(1, 2, 3, 4))
  expect_error(vb(y ~ x, data = transform(d, y = c(0, 1, -1, 2)), family = poisson()), "non-negative whole")
  expect_error(vb(y ~ x, data = transform(d, y = c(0, 1, 1.5, 2)), family = poisson()), "non-negative whole")
  expect_error(vb(y ~ x, data = transform(d, y = c(0, 1, Inf, 2)), family = poisson()), "infinite")
  expect_error(vb(y ~ x, data = transform(d, x = c(1, Inf, 2, 3)), family = poisson()), "infinite")
  expect_error(vb(y ~ x, data = transform(d, y = letters[1:4])), "numeric")
  expect_error(vb(y ~ x, data = d, family = poisson(), exposure = 0), "positive")
  expect_error(vb(y ~ x, data = d, family = poisson(), exposure = c(1, -1, 1, 1)), "exposure")
  # like weights and offsets, an NA exposure drops its row through na.action
  expect_equal(nobs(vb(y ~ x, data = d, family = poisson(), exposure = c(1, NA, 1, 1))), 3L)
  expect_error(vb(y ~ x, data = d, exposure = 0.1), "poisson")
  expect_error(vb(y ~ x, data = d, family = poisson(), subset = x > 10), "no rows")
  expect_error(vb(y ~ x, data = d, family = poisson(), offset = 1:3), "variable lengths|length")
  expect_error(vb(y ~ x, data = d, family = Gamma()), "not supported.*gaussian")
  expect_error(vb(y ~ x, data = d, family = poisson(link = "identity")), "not supported")
  expect_error(vb(y ~ x, data = d, prior = normal(0, Inf)), "improper")
  expect_error(vb(y ~ x, data = d, prior_intercept = normal(0, -1)), "improper")
  expect_error(vb(y ~ x, data = d, prior = normal(0, c(1, 2))), "non-intercept")
  expect_error(vb(y ~ x, data = d, prior = laplace(0, 0)), "improper")
  expect_error(gamma_prior(0, 1), "improper")
  expect_error(vb(y ~ x, data = d, family = binomial()), "0/1")
  expect_error(vb(cbind(y, x - 5) ~ 1, data = d, family = binomial()), "non-negative")
  expect_error(vb(y / 4 ~ x, data = transform(d, y = c(0, 1, 5, 2)), weights = rep(4, 4),
                  family = binomial()), "exceed")
  expect_error(vb(y ~ x, data = d, weights = c(1, -1, 1, 1)), "weights")
  expect_error(vb(y ~ x, data = d, approx = "block", control = vb_control(blocks = list("x"))),
               "partition")
  expect_error(vb(y ~ x, data = d, approx = "block",
                  control = vb_control(blocks = list(c("x", "(Intercept)"), "x"))), "partition")
  expect_error(vb_control(maxit = 0), "maxit")
  expect_error(vb_control(tol = -1), "tol")
  expect_error(vb_fit(matrix("a", 2, 1), 1:2), "numeric matrix")
  expect_error(vb_fit(matrix(1, 3, 1), 1:2), "length")
})

test_that("C entry points reject wrong types without crashing", {
  M <- c_model(cbind(1, 1:5), c(0, 1, 0, 2, 1))
  expect_error(.Call(vbayes:::C_glm_cavi, 1, 2, 3, 4))
  ctl <- vb_control(maxit = 10)
  expect_error(.Call(vbayes:::C_glm_cavi, M, "a", 0L, ctl))
  expect_error(.Call(vbayes:::C_glm_cavi, M, c(0, 0, 1, 1), 0:1, c(10, 1e-8, 1, 0)), "control")
  expect_error(.Call(vbayes:::C_glm_cavi, M, c(0, 0, 1, 1), 0:1, unclass(ctl)[-1]), "maxit")
  bad_ctl <- ctl; bad_ctl$maxit <- 1e10
  expect_error(.Call(vbayes:::C_glm_cavi, M, c(0, 0, 1, 1), 0:1, bad_ctl), "maxit")
  bad_ctl$maxit <- NA_integer_
  expect_error(.Call(vbayes:::C_glm_cavi, M, c(0, 0, 1, 1), 0:1, bad_ctl), "maxit")
  expect_error(.Call(vbayes:::C_glm_cavi, M, c(0, 0, 1, 1), c(0L, 3L), ctl), "block")
  expect_error(.Call(vbayes:::C_glm_elbo, M, 1, diag(2), c(1, 1)), "mu")
  expect_error(.Call(vbayes:::C_glm_elbo, M, c(0, 0), diag(-1, 2), c(1, 1)), "positive definite")
  expect_error(.Call(vbayes:::C_glm_log_joint, M, matrix(0, 3, 1)), "rows")
  expect_error(.Call(vbayes:::C_glm_jj, M, ctl), "binomial")
  bad <- M; bad$X <- matrix(1L, 5, 2)
  expect_error(.Call(vbayes:::C_glm_log_joint, bad, matrix(0, 2, 1)), "double matrix")
  bad <- M; bad$y <- 1:5 + 0; bad$y[2] <- NA
  expect_error(.Call(vbayes:::C_glm_log_joint, bad, matrix(0, 2, 1)), "finite")
  bad <- M; bad$prior_scale <- c(1, 0)
  expect_error(.Call(vbayes:::C_glm_log_joint, bad, matrix(0, 2, 1)), "positive")
  bad <- M; bad$family <- 7L
  expect_error(.Call(vbayes:::C_glm_log_joint, bad, matrix(0, 2, 1)), "family")
  bad <- M[names(M) != "y"]
  expect_error(.Call(vbayes:::C_glm_log_joint, bad, matrix(0, 2, 1)), "no element")
})
