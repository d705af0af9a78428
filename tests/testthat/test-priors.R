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

# ---- issue 12: autoscaled defaults, explicit priors, rstanarm objects --------

test_that("default priors follow rstanarm's autoscaling rule, computed by hand", {
  f <- vb(mpg ~ wt + am, data = mtcars)
  ps <- prior_summary(f)
  sy <- sd(mtcars$mpg)
  tab <- ps$table
  expect_equal(tab$scale[tab$term == "(Intercept)"], 2.5 * sy)
  expect_equal(tab$location[tab$term == "(Intercept)"], mean(mtcars$mpg))
  expect_equal(tab$scale[tab$term == "wt"], 2.5 * sy / sd(mtcars$wt))
  expect_equal(tab$scale[tab$term == "am"], 2.5 * sy / sd(mtcars$am)) # binary: sd too
  expect_equal(tab$location[tab$term != "(Intercept)"], c(0, 0))
  expect_true(ps$centred)
  expect_equal(ps$centre, colMeans(mtcars[c("wt", "am")]))
  expect_equal(ps$precision$rate, 0.01 * sy^2)
  expect_equal(ps$precision$shape, 1)
  # non-gaussian: 2.5 / sd(x), intercept normal(0, 2.5); no precision prior
  b <- vb(am ~ wt + hp, data = mtcars, family = binomial())
  tb <- prior_summary(b)$table
  expect_equal(tb$scale, c(2.5, 2.5 / sd(mtcars$wt), 2.5 / sd(mtcars$hp)))
  expect_equal(tb$location, c(0, 0, 0))
  expect_null(prior_summary(b)$precision)
  # a constant column keeps the unscaled 2.5 (rstanarm: one category -> sd 1)
  d <- data.frame(y = mtcars$mpg, x = mtcars$wt, k = 3)
  expect_equal(prior_summary(vb(y ~ x + k, data = d))$table$scale[3], 2.5 * sy)
})

test_that("autoscaled defaults match rstanarm's prior_summary() of the same model", {
  skip_on_cran()
  skip_if_not_installed("rstanarm")
  fit_rs <- function(...) suppressWarnings(suppressMessages(
    rstanarm::stan_glm(..., algorithm = "optimizing", refresh = 0, seed = 1)))
  g <- rstanarm::prior_summary(fit_rs(mpg ~ wt + am, data = mtcars))
  v <- prior_summary(vb(mpg ~ wt + am, data = mtcars))$table
  expect_equal(v$scale[-1], as.numeric(g$prior$adjusted_scale))
  expect_equal(v$location[-1], as.numeric(g$prior$location))
  expect_equal(v$scale[1], as.numeric(g$prior_intercept$adjusted_scale))
  expect_equal(v$location[1], as.numeric(g$prior_intercept$location))
  b <- rstanarm::prior_summary(fit_rs(am ~ wt + hp, data = mtcars, family = binomial()))
  vb_b <- prior_summary(vb(am ~ wt + hp, data = mtcars, family = binomial()))$table
  expect_equal(vb_b$scale[-1], as.numeric(b$prior$adjusted_scale))
  expect_equal(vb_b$scale[1], as.numeric(b$prior_intercept$scale)) # not autoscaled: 2.5
})

test_that("the default prior sits on the centred intercept: dense solve of the semi-conjugate update", {
  f <- vb(mpg ~ wt + hp, data = mtcars)
  ps <- prior_summary(f)
  X <- cbind(1, mtcars$wt, mtcars$hp)
  xbar <- colMeans(X[, -1])
  Xc <- cbind(1, sweep(X[, -1], 2, xbar))
  m0 <- ps$table$location; S0inv <- diag(1 / ps$table$scale^2)
  Etau <- f$tau[["shape"]] / f$tau[["rate"]]
  # q(alpha, beta) = N(mu_c, Sigma_c), Sigma_c = (E tau Xc'Xc + S0^-1)^-1 (algorithms.md 4.3)
  Sc <- solve(Etau * crossprod(Xc) + S0inv)
  mc <- Sc %*% (Etau * crossprod(Xc, mtcars$mpg) + S0inv %*% m0)
  A <- diag(3); A[1, 2:3] <- -xbar                  # beta_0 = alpha - xbar' beta
  # (to the CAVI tolerance of q(tau): E tau is read from the fit)
  expect_equal(unname(coef(f)), drop(A %*% mc), tolerance = 1e-6)
  expect_equal(unname(vcov(f)), A %*% Sc %*% t(A), tolerance = 1e-4)
  # the issue's example: the default no longer shrinks wt (lm: -3.88)
  l <- lm(mpg ~ wt + hp, data = mtcars)
  expect_lt(max(abs(coef(f) - coef(l)) / sqrt(diag(vcov(l)))), 0.05)
  # evidence by quadrature in the centred coordinates (unit Jacobian): ELBO below, close
  lz <- gaussian_log_evidence(Xc, mtcars$mpg, m0, ps$table$scale, 1, ps$precision$rate)
  expect_lt(elbo(f), lz)
  expect_lt(lz - elbo(f), 0.1)
  # the log joint the diagnostics use agrees with the ELBO (Monte Carlo mean of log p - log q)
  set.seed(3)
  dg <- vb_diagnose(f, S = 4000, K = 1)
  expect_lt(abs(dg$elbo_mc - elbo(f)), 4 * dg$elbo_mc_se)
})

test_that("poly() terms are no longer shrunk by the default prior", {
  f <- vb(mpg ~ poly(hp, 2), data = mtcars)
  l <- lm(mpg ~ poly(hp, 2), data = mtcars)
  expect_lt(max(abs(coef(f) - coef(l)) / sqrt(diag(vcov(l)))), 0.1)
})

test_that("explicit priors mean exactly what they say; autoscale = TRUE opts in", {
  f <- vb(mpg ~ wt + hp, data = mtcars, prior = normal(0, 1), prior_intercept = normal(0, 10))
  tab <- prior_summary(f)$table
  expect_equal(tab$scale, c(10, 1, 1))
  expect_false(prior_summary(f)$centred)
  fa <- vb(mpg ~ wt + hp, data = mtcars, prior = normal(0, 1, autoscale = TRUE),
           prior_intercept = normal(0, 10))
  sy <- sd(mtcars$mpg)
  expect_equal(prior_summary(fa)$table$scale, c(10, sy / sd(mtcars$wt), sy / sd(mtcars$hp)))
  # an explicit intercept prior applies to the model-matrix intercept
  pin <- vb(mpg ~ wt, data = mtcars, prior_intercept = normal(5, 1e-4))
  expect_equal(coef(pin)[["(Intercept)"]], 5, tolerance = 1e-3)
  expect_false(prior_summary(pin)$centred)
  # an explicit gamma prior is used as given
  fp <- vb(mpg ~ wt, data = mtcars, prior_precision = gamma_prior(2, 3))
  expect_equal(unlist(prior_summary(fp)$precision[c("shape", "rate")]), c(shape = 2, rate = 3))
  expect_equal(prior_summary(vb(mpg ~ wt, data = mtcars, prior_precision = gamma_prior(2, 3, autoscale = TRUE)))$precision$rate,
               3 * sy^2)
  expect_error(normal(0, 1, autoscale = NA), "TRUE or FALSE")
})

test_that("the default centring changes the factorisation of meanfield q, never the ordering", {
  fr <- vb(mpg ~ wt + hp, data = mtcars)
  mf <- vb(mpg ~ wt + hp, data = mtcars, approx = "meanfield")
  expect_lte(elbo(mf), elbo(fr) + 1e-8)
  # slopes independent of each other under q, intercept correlated through the centring
  expect_equal(vcov(mf)["wt", "hp"], 0)
  expect_equal(unname(vcov(mf)["(Intercept)", "wt"]), -mean(mtcars$wt) * vcov(mf)["wt", "wt"])
})

test_that("rstanarm's prior objects are accepted with the same meaning; others are refused", {
  skip_if_not_installed("rstanarm")
  a <- vb(mpg ~ wt, data = mtcars, prior = rstanarm::normal(0, 2), prior_intercept = rstanarm::normal(10, 5))
  b <- vb(mpg ~ wt, data = mtcars, prior = normal(0, 2), prior_intercept = normal(10, 5))
  expect_equal(coef(a), coef(b))
  expect_equal(elbo(a), elbo(b))
  a2 <- vb(mpg ~ wt, data = mtcars, prior = rstanarm::laplace(0, 1, autoscale = TRUE))
  b2 <- vb(mpg ~ wt, data = mtcars, prior = laplace(0, 1, autoscale = TRUE))
  expect_equal(coef(a2), coef(b2))
  # rstanarm's scale = NULL is its default 2.5
  expect_equal(prior_summary(vb(mpg ~ wt, data = mtcars, prior = rstanarm::normal()))$table$scale[2], 2.5)
  expect_error(vb(mpg ~ wt, data = mtcars, prior = rstanarm::student_t(4)), "student_t.*normal\\(\\) and laplace\\(\\)")
  expect_error(vb(mpg ~ wt, data = mtcars, prior = rstanarm::hs()), "hs\\(\\) is not supported")
  expect_error(vb(mpg ~ wt, data = mtcars, prior_intercept = rstanarm::cauchy()), "not supported")
  expect_error(vb(mpg ~ wt, data = mtcars, prior_precision = rstanarm::exponential()), "gamma_prior")
  expect_error(vb(mpg ~ wt, data = mtcars, prior = list(1, 2)), "normal\\(location, scale\\)")
})

test_that("prior_summary() is registered for rstantools' generic and prints the adjusted scales", {
  f <- vb(mpg ~ wt + hp, data = mtcars)
  skip_if_not_installed("rstantools")
  expect_identical(rstantools::prior_summary(f), prior_summary(f))
  expect_output(print(prior_summary(f)), "Adjusted:  normal\\(location = \\[0, 0\\], scale = \\[15.4, 0.22\\]\\)")
  expect_output(print(f), "coefficients ~ normal\\(0, \\[15.4, 0.2198\\]\\) \\(autoscaled\\)")
  expect_output(print(summary(f)), "wt +~ normal\\(0, 15.4\\) \\(autoscaled\\)")
})

test_that("an explicit NULL prior (rstanarm's flat prior) is refused; vb_fit() takes NULL as the default", {
  expect_error(vb(mpg ~ wt, data = mtcars, prior = NULL), "flat prior.*leave 'prior' out")
  expect_error(vb(mpg ~ wt, data = mtcars, prior_precision = NULL), "prior_precision")
  X <- cbind("(Intercept)" = 1, wt = mtcars$wt)
  expect_equal(coef(vb_fit(X, mtcars$mpg)), coef(vb(mpg ~ wt, data = mtcars)), ignore_attr = TRUE)
  # a wrapper passing its own missing argument on gets the default
  wrap <- function(p) vb(mpg ~ wt, data = mtcars, prior = p)
  expect_equal(coef(wrap()), coef(vb(mpg ~ wt, data = mtcars)))
  expect_error(prior_summary(1), "expected a fit from vb")
})
