#' vbayes: variational Bayesian inference with a C core
#'
#' Fit generalised linear models and other models by variational Bayes: an
#' approximate Gaussian posterior q and the evidence lower bound (ELBO) on
#' log p(y), computed by coordinate ascent in C.  Start with [vb()] and the
#' "Getting started" vignette (`vignette("getting-started", package = "vbayes")`).
#'
#' @keywords internal
#' @useDynLib vbayes, .registration = TRUE, .fixes = "C_"
#' @importFrom stats gaussian poisson binomial model.frame model.response model.offset
#'   model.weights model.matrix model.extract terms delete.response .getXlevels qnorm
#'   pnorm rnorm rpois rbinom qlogis plogis coef vcov confint predict fitted
#'   residuals nobs formula simulate na.omit quantile sd setNames
#'   printCoefmat is.empty.model
#' @importFrom graphics plot lines segments abline axis par legend
"_PACKAGE"
