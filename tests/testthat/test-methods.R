# S3 methods and the object model.  ELBOs are checked against the reference
# ELBOs of helper-elbo.R, written from the formulas and evaluated at the
# fitted q; intervals against quantiles of the Gaussian q.

test_that("gaussian, binomial-GVA and Laplace-prior ELBOs match R references at the fitted q", {
  f <- vb(mpg ~ wt + hp, data = mtcars, prior = normal(0, 2), prior_intercept = normal(1, 30),
          prior_precision = gamma_prior(2, 3))
  r <- ref_elbo_fit(f, list(type = rep("normal", 3), location = c(1, 0, 0), scale = c(30, 2, 2)),
                    tau_prior = c(2, 3))
  expect_equal(elbo(f, terms = TRUE), r, tolerance = 1e-8)
  expect_equal(unlist(glance(f)[c("elbo", "loglik", "kl")]), r, tolerance = 1e-8)

  set.seed(1)
  d <- data.frame(x = rnorm(60), n = sample(1:6, 60, TRUE))
  d$s <- rbinom(60, d$n, plogis(-0.3 + d$x))
  d$c <- rpois(60, exp(0.5 + 0.4 * d$x))
  fb <- vb(cbind(s, n - s) ~ x, data = d, family = binomial(), prior = normal(0, 2),
           prior_intercept = normal(0, 10))
  rb <- ref_elbo_fit(fb, list(type = c("normal", "normal"), location = c(0, 0), scale = c(10, 2)))
  expect_equal(elbo(fb, terms = TRUE), rb, tolerance = 1e-8)

  fl <- vb(c ~ x, data = d, family = poisson(), prior = laplace(0.1, 0.5),
           prior_intercept = laplace(0, 3))
  rl <- ref_elbo_fit(fl, list(type = c("laplace", "laplace"), location = c(0, 0.1), scale = c(3, 0.5)))
  expect_equal(elbo(fl, terms = TRUE), rl, tolerance = 1e-8)
  # a Laplace prior whose scale is small enough to pull a slope towards 0
  fg <- vb(mpg ~ wt + hp, data = mtcars, prior = laplace(0, 0.05), prior_intercept = normal(0, 10),
           prior_precision = gamma_prior(1, 1), approx = "meanfield")
  rg <- ref_elbo_fit(fg, list(type = c("normal", "laplace", "laplace"), location = c(0, 0, 0),
                              scale = c(10, 0.05, 0.05)))
  expect_equal(elbo(fg, terms = TRUE), rg, tolerance = 1e-8)
})

test_that("summary, confint and tidy agree with the Gaussian q", {
  fit <- vb(mpg ~ wt + hp, data = mtcars)
  s <- summary(fit, level = 0.9)
  sd <- sqrt(diag(vcov(fit)))
  expect_equal(s$coefficients[, "SD"], sd)
  expect_equal(unname(confint(fit, level = 0.9)[, 2]), unname(coef(fit) + qnorm(0.95) * sd))
  expect_equal(unname(confint(fit, "wt")[1, ]), unname(coef(fit)["wt"] + qnorm(c(0.025, 0.975)) * sd["wt"]))
  td <- tidy(fit, conf.int = TRUE)
  expect_named(td, c("term", "estimate", "std.error", "conf.low", "conf.high"))
  expect_equal(td$std.error, unname(sd))
  gl <- glance(fit)
  expect_named(gl, c("elbo", "loglik", "kl", "nobs", "converged", "iterations"))
  expect_equal(gl$nobs, 32L)
  # sigma's posterior mean E[tau^-1/2] against Monte Carlo from q(tau)
  set.seed(1)
  expect_equal(s$sigma[["mean"]], mean(1 / sqrt(rgamma(1e6, fit$tau[1], fit$tau[2]))), tolerance = 1e-3)
  expect_error(confint(fit, level = 1.5), "between 0 and 1")
})

test_that("GLM fits are vb_posterior objects; vb_density fits get the parent's methods only", {
  fit <- vb(mpg ~ wt, data = mtcars)
  expect_s3_class(fit, c("vbfit", "vb_posterior"), exact = TRUE)
  set.seed(5)
  P <- solve(matrix(c(1, 0.5, 0.5, 2), 2))
  dens <- vb_density(function(th) -0.5 * sum(th * (P %*% th)), init = c(a = 1, b = -1),
                     gradient = function(th) -drop(P %*% th),
                     control = vb_control(quiet = TRUE, sgvb_maxit = 2000))
  # the class vb_density() gives once the object model is merged everywhere
  class(dens) <- c("vbdensity", "vb_posterior")
  # broom's convention for a model without data: glance() has no nobs column
  g <- glance(dens)
  expect_equal(nrow(g), 1L)
  expect_named(g, c("elbo", "elbo_se", "converged", "iterations"))
  expect_equal(g$elbo, dens$elbo)
  expect_error(nobs(dens), "no data")
  expect_error(fitted(dens), "no data")
  expect_error(residuals(dens), "no data")
  expect_error(predict(dens), "no data")
  expect_error(simulate(dens), "no data")
  # what every posterior has: coefficients, vcov, intervals and draws of q
  expect_equal(names(coef(dens)), c("a", "b"))
  ci <- confint(dens, level = 0.8)
  expect_equal(unname(ci[, 2] - ci[, 1]), unname(2 * qnorm(0.9) * sqrt(diag(vcov(dens)))))
  expect_equal(tidy(dens)$std.error, unname(sqrt(diag(vcov(dens)))))
  dr <- draws(dens, 20000)
  expect_equal(colnames(dr), c("a", "b"))
  expect_equal(cov(dr), vcov(dens), tolerance = 0.05, ignore_attr = TRUE)
  pdf(NULL)
  on.exit(dev.off())
  expect_equal(plot(dens)$elbo, dens$elbo_trace)
  # the parent's print, for posterior classes without one of their own
  expect_output(print(structure(unclass(dens), class = "vb_posterior")), "ELBO .*Monte Carlo se")
})

test_that("fitted() and residuals() follow na.action like glm()", {
  d <- mtcars[, c("mpg", "wt")]
  d$wt[3] <- NA
  fit <- vb(mpg ~ wt, data = d, na.action = na.exclude)
  g <- glm(mpg ~ wt, data = d, na.action = na.exclude)
  expect_length(fitted(fit), 32L)
  expect_true(is.na(fitted(fit)[3]) && is.na(residuals(fit)[3]))
  expect_equal(is.na(residuals(fit)), is.na(residuals(g)), ignore_attr = TRUE)
  expect_equal(nobs(fit), nobs(g))
})

test_that("without an na.action argument the \"na.action\" option applies, as in glm()", {
  d <- mtcars[, c("mpg", "wt", "hp")]
  d$wt[3] <- NA
  for (opt in c("na.omit", "na.exclude")) {
    old <- options(na.action = opt)
    fit <- vb(mpg ~ wt + hp, data = d, control = vb_control(quiet = TRUE))
    g <- glm(mpg ~ wt + hp, data = d)
    options(old)
    expect_identical(fit$na.action, g$na.action, label = opt)
    expect_identical(dim(fit$model), dim(g$model), label = opt)
    expect_equal(is.na(residuals(fit)), is.na(residuals(g)), ignore_attr = TRUE, label = opt)
  }
  old <- options(na.action = "na.fail")
  expect_error(vb(mpg ~ wt, data = d, control = vb_control(quiet = TRUE)), "missing values")
  expect_identical(vb(mpg ~ hp, data = d, control = vb_control(quiet = TRUE))$model,
                   model.frame(mpg ~ hp, data = d))
  options(old)
  # a frame without NA is the model frame glm() builds
  fit <- vb(mpg ~ hp + factor(cyl), data = mtcars, control = vb_control(quiet = TRUE))
  expect_identical(fit$model, glm(mpg ~ hp + factor(cyl), data = mtcars)$model)
  expect_null(fit$na.action)
})

test_that("fields are matched exactly: an x = FALSE fit says to refit with x = TRUE", {
  fit <- vb(mpg ~ wt, data = mtcars, x = FALSE)
  expect_null(fit[["x"]])
  expect_false(is.null(fit$xlevels))  # what fit$x would partially match
  expect_error(vb_diagnose(fit, S = 100, K = 10), "refit with x = TRUE")
  expect_error(vbayes:::log_joint(fit, matrix(0, 3, 2)), "refit with x = TRUE")
  expect_error(predict(fit), "x = FALSE.*newdata")
  expect_error(simulate(fit), "refit with x = TRUE")
  full <- vb(mpg ~ wt, data = mtcars)
  nd <- data.frame(wt = c(2, 3))
  expect_equal(predict(fit, nd), predict(full, nd))
  noy <- vb(mpg ~ wt, data = mtcars, y = FALSE)
  expect_error(vb_diagnose(noy, S = 100, K = 10), "refit with y = TRUE")
  # elbo() reads the exact field: a list whose only ELBO-like field is
  # "elbo_terms" is not an ELBO
  expect_error(elbo(list(elbo_terms = c(elbo = 1))), "no ELBO")
})

test_that("plot methods draw and return their data", {
  fit <- vb(mpg ~ wt + hp, data = mtcars)
  f <- tempfile(fileext = ".png")
  grDevices::png(f)
  e <- plot(fit, which = "elbo")
  cf <- plot(fit, which = "coef", pars = names(coef(fit)))
  grDevices::dev.off()
  expect_equal(e$elbo, fit$elbo_trace)
  expect_equal(cf$estimate, unname(coef(fit)))
  expect_equal(cf$upper, unname(confint(fit)[, 2]))
  expect_true(file.exists(f))
})

# ---- issue 12: the generics a glm user expects -------------------------------

wide <- list(prior = normal(0, 1e3), prior_intercept = normal(0, 1e3))

test_that("residuals of every type approach glm's with wide priors", {
  set.seed(121)
  n <- 4000
  d <- data.frame(x = rnorm(n), z = rnorm(n))
  d$cnt <- rpois(n, exp(0.3 + 0.4 * d$x - 0.2 * d$z))
  d$tr <- rpois(n, 3) + 1
  d$s <- rbinom(n, d$tr, plogis(-0.2 + 0.7 * d$x))
  d$y <- 1 + d$x - 0.5 * d$z + rnorm(n)
  cases <- list(
    gaussian = list(y ~ x + z, gaussian()),
    poisson = list(cnt ~ x + z, poisson()),
    binomial = list(cbind(s, tr - s) ~ x, binomial()))
  for (cs in cases) {
    f <- do.call(vb, c(list(cs[[1]], data = d, family = cs[[2]]), wide))
    g <- glm(cs[[1]], data = d, family = cs[[2]])
    for (type in c("deviance", "pearson", "working", "response")) {
      rf <- residuals(f, type = type); rg <- residuals(g, type = type)
      expect_lt(max(abs(rf - rg)) / sd(rg), 1e-2, label = paste(cs[[2]]$family, type))
    }
    expect_equal(weights(f), weights(g, type = "prior"), ignore_attr = TRUE)
    expect_equal(weights(f, type = "working"), weights(g, type = "working"), tolerance = 1e-2,
                 ignore_attr = TRUE)
    expect_equal(model.matrix(f), model.matrix(g), ignore_attr = TRUE)
    expect_identical(family(f)$family, family(g)$family)
    expect_equal(nrow(model.frame(f)), nrow(model.frame(g)))
    # the expected deviance exceeds the minimum by about p (E of a chi-square_p)
    expect_equal(deviance(f) - deviance(g), length(coef(g)), tolerance = 0.05)
  }
  expect_identical(residuals(f), residuals(f, type = "deviance")) # glm's default type
})

test_that("deviance() is the expected deviance under q, in closed form for gaussian and poisson", {
  f <- vb(mpg ~ wt + hp, data = mtcars)
  X <- model.matrix(f)
  m <- drop(X %*% coef(f)); v <- rowSums((X %*% vcov(f)) * X)
  expect_equal(deviance(f), sum((mtcars$mpg - m)^2 + v))
  set.seed(122)
  d <- data.frame(x = rnorm(60)); d$y <- rpois(60, exp(0.5 + 0.5 * d$x))
  fp <- vb(y ~ x, data = d, family = poisson())
  X <- model.matrix(fp); m <- drop(X %*% coef(fp)); v <- rowSums((X %*% vcov(fp)) * X)
  # Monte Carlo over q of the poisson deviance
  set.seed(123)
  B <- MASS::mvrnorm(2e5, coef(fp), vcov(fp))
  dev <- apply(exp(X %*% t(B)), 2, function(mu) sum(poisson()$dev.resids(d$y, mu, 1)))
  expect_equal(deviance(fp), mean(dev), tolerance = 3 * sd(dev) / sqrt(length(dev)) / mean(dev))
  # binomial by Gauss-Hermite against Monte Carlo
  d$b <- rbinom(60, 1, plogis(d$x))
  fb <- vb(b ~ x, data = d, family = binomial())
  B <- MASS::mvrnorm(1e5, coef(fb), vcov(fb))
  devb <- apply(plogis(X %*% t(B)), 2, function(mu) sum(binomial()$dev.resids(d$b, mu, 1)))
  expect_equal(deviance(fb), mean(devb), tolerance = 4 * sd(devb) / sqrt(length(devb)) / mean(devb))
})

test_that("sigma() is the posterior mean of sigma; near lm's with wide priors", {
  set.seed(124)
  n <- 3000
  d <- data.frame(x = rnorm(n)); d$y <- 2 + d$x + rnorm(n, sd = 1.5)
  f <- do.call(vb, c(list(y ~ x, data = d), wide))
  expect_equal(sigma(f), sigma(lm(y ~ x, data = d)), tolerance = 2e-3)
  # Monte Carlo of tau^-1/2 under q(tau) = Gamma(A, B)
  set.seed(125)
  expect_equal(sigma(f), mean(1 / sqrt(rgamma(1e6, f$tau[["shape"]], f$tau[["rate"]]))), tolerance = 1e-3)
  expect_identical(sigma(vb(cnt ~ 1, data = data.frame(cnt = rpois(20, 2)), family = poisson())), 1)
})

test_that("df.residual(), logLik(), AIC() and BIC() refuse and point to elbo() and loo()", {
  f <- vb(mpg ~ wt, data = mtcars)
  expect_error(df.residual(f), "no residual degrees of freedom.*elbo\\(\\)")
  expect_error(logLik(f), "elbo\\(\\).*loo\\(\\)")
  expect_error(AIC(f), "elbo\\(\\).*loo\\(\\)")
  expect_error(BIC(f), "elbo\\(\\).*loo\\(\\)")
})

test_that("model.matrix() rebuilds the design of an x = FALSE fit; matrix fits say what they lack", {
  f <- vb(mpg ~ wt + factor(cyl), data = mtcars, x = FALSE)
  expect_equal(model.matrix(f), model.matrix(lm(mpg ~ wt + factor(cyl), data = mtcars)))
  X <- cbind("(Intercept)" = 1, x = mtcars$wt)
  m <- vb_fit(X, mtcars$mpg)
  expect_identical(model.matrix(m), m$x)
  expect_error(model.frame(m), "vb_fit\\(\\)")
  expect_error(residuals(f, type = "bogus"), "should be one of")
})
