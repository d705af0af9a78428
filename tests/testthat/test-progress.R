# Progress lines of the C engines are R messages (issue 11/12): suppressMessages()
# silences them, handlers see them, and a handler that leaves by a jump
# (tryCatch(message = ), an error) ends the fit cleanly and then takes effect.

set.seed(12)
d <- data.frame(x = rnorm(300))
d$y <- rpois(300, exp(0.5 + 0.4 * d$x))
d$b <- rbinom(300, 1, plogis(d$x))
fit_p <- function(...) vb(y ~ x, data = d, family = poisson(), ...)

test_that("every iteration's progress line is a message when the interval is 0", {
  withr_opt <- options(vbayes.progress_interval = 0)
  on.exit(options(withr_opt))
  msgs <- character(0)
  fit <- withCallingHandlers(fit_p(), message = function(m) {
    msgs <<- c(msgs, conditionMessage(m))
    invokeRestart("muffleMessage")
  })
  expect_true(fit$converged)
  expect_gte(length(msgs), 1L)
  expect_match(msgs[1], "^vb: iteration 1, ELBO -[0-9.]+\n$")
  expect_equal(length(msgs), fit$iterations)
  expect_message(vb(y ~ x, data = d), "vb: iteration")                      # gaussian path
  expect_message(vb(b ~ x, data = d, family = binomial(), control = vb_control(binomial_method = "jj")),
                 "vb \\(JJ\\): iteration")
  # vb_density()'s progress messages: test-density.R
})

test_that("suppressMessages() and quiet silence progress; warnings stay", {
  old <- options(vbayes.progress_interval = 0)
  on.exit(options(old))
  expect_silent(suppressMessages(fit_p()))
  expect_silent(fit_p(control = vb_control(quiet = TRUE)))
  expect_warning(suppressMessages(fit_p(control = vb_control(maxit = 1))), "not converged")
})

test_that("a handler that jumps ends the fit cleanly and the jump takes effect", {
  old <- options(vbayes.progress_interval = 0)
  on.exit(options(old))
  expect_identical(tryCatch(fit_p(), message = function(m) "caught"), "caught")
  expect_error(withCallingHandlers(fit_p(), message = function(m) stop("stop from a handler")),
               "stop from a handler")
  # nothing is left pending: the next fit runs to convergence
  fit <- suppressMessages(fit_p())
  expect_true(fit$converged)
  options(vbayes.progress_interval = NULL)
  expect_true(fit_p(control = vb_control(quiet = TRUE))$converged)
})
