# Plots return what they draw; the coefficient plot leaves out the intercept
# unless asked; filter lags carry units.

png_null <- function() {
  f <- tempfile(fileext = ".png")
  grDevices::png(f)
  f
}

test_that("plot(fit, 'coef') leaves out the intercept by default and takes pars", {
  fit <- vb(mpg ~ wt + hp, data = mtcars)
  f <- png_null(); on.exit({ grDevices::dev.off(); unlink(f) })
  p <- plot(fit, "coef")
  expect_equal(p$term, c("wt", "hp"))
  ci <- confint(fit, level = 0.95)
  expect_equal(p$lower, unname(ci[c("wt", "hp"), 1]))
  p2 <- plot(fit, "coef", pars = c("(Intercept)", "wt"), level = 0.5)
  expect_equal(p2$term, c("(Intercept)", "wt"))
  expect_equal(p2$upper, unname(confint(fit, level = 0.5)[1:2, 2]))
  expect_equal(plot(fit, "coef", pars = 3)$term, "hp")
  expect_error(plot(fit, "coef", pars = "nope"), "pars")
  expect_error(plot(fit, "coef", pars = 9), "pars")
  # a model with only an intercept shows it
  expect_equal(plot(vb(mpg ~ 1, data = mtcars), "coef")$term, "(Intercept)")
  e <- plot(fit)
  expect_equal(e$elbo, fit$elbo_trace)
})

test_that("lag_axis() puts filter lags in ms or s", {
  a <- vbayes:::lag_axis(1:10, (1:10) * 0.005)
  expect_equal(a$lab, "lag (ms)")
  expect_equal(a$x, (1:10) * 5)
  expect_equal(vbayes:::lag_axis(1:3, c(0.5, 1, 1.5))$lab, "lag (s)")
  expect_equal(vbayes:::lag_axis(1:3, rep(NA_real_, 3))$lab, "lag (bins)")
  B <- raised_cosine_basis(3, c(0.005, 0.02), 0.01, 0.005)
  fh <- vb(spikes ~ stim + spike_history(spikes, B, trial), data = neuron[1:1500, ], family = poisson(),
           exposure = 0.005)
  f <- png_null(); on.exit({ grDevices::dev.off(); unlink(f) })
  expect_s3_class(plot(filters(fh)), "vb_filters")
})

test_that("vb_lds plots return the latent and rate bands they draw", {
  set.seed(1)
  z <- as.numeric(arima.sim(list(ar = 0.95), 80))
  Y <- matrix(rpois(240, exp(0.3 + outer(z, c(0.4, -0.3, 0.5)))), 80)
  fit <- suppressWarnings(vb_lds(Y, 1, family = poisson(), control = vb_control(maxit = 30, quiet = TRUE)))
  f <- png_null(); on.exit({ grDevices::dev.off(); unlink(f) })
  l <- plot(fit, level = 0.9)
  sd <- sqrt(fit$posterior[[1]]$cov[1, 1, ])
  expect_equal(l$upper[, 1], fit$posterior[[1]]$mean[, 1] + qnorm(0.95) * sd)
  r <- plot(fit, "rates", units = c(1, 3))
  expect_equal(dim(r$fitted), c(80L, 2L))
  expect_equal(r$fitted, predict(fit)[, c(1, 3)])
  expect_true(all(r$lower <= r$fitted & r$fitted <= r$upper))
  expect_equal(r$observed, Y[, c(1, 3)])
  expect_error(plot(fit, "rates", units = 7), "units")
  expect_error(plot(fit, trial = 2), "trial")
  expect_equal(nrow(plot(fit, "elbo")), length(fit$elbo_trace))
})
