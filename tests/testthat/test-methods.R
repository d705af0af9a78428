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
           approx = "meanfield")
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
