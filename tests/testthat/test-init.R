# Every registered .Call entry point must reject junk arguments with an R
# error rather than crash the session (src/init.c registers them all).

test_that("every C entry point errors cleanly on arguments of the wrong type", {
  routines <- getDLLRegisteredRoutines("vbayes")$.Call
  expect_gt(length(routines), 0L)
  junk <- list(NULL, "a", list(), 1L, NA_real_, matrix(1, 2, 2), list(a = 1), -1)
  for (r in routines) {
    fn <- get(paste0("C_", r$name), envir = asNamespace("vbayes"))
    for (j in junk) {
      args <- rep(list(j), r$numParameters)
      expect_error(do.call(.Call, c(list(fn), args)), label = sprintf("%s(%s)", r$name, class(j)[1]))
    }
  }
})
