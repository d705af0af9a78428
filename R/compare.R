#' Compare models of the same data by their evidence bound
#'
#' Tabulates the evidence lower bound (ELBO) of each fit, its two terms
#' (expected log-likelihood, the accuracy; KL from the prior, the complexity),
#' the difference to the best ELBO and approximate posterior model
#' probabilities.  `anova()` on `vbfit` objects calls `compare_models()`.
#'
#' Each ELBO lies below its model's log evidence log p(y | m) by
#' KL(q || exact posterior).  A difference of ELBOs is therefore an
#' approximation to the log Bayes factor, not the log Bayes factor itself:
#' it is exact only when both gaps are equal.  The gaps are small for nearly
#' conjugate models (Gaussian linear models) and grow with posterior
#' non-Gaussianity.  The posterior model probabilities
#' softmax(ELBO + log prior_prob) treat ELBOs as log evidences and share
#' that caveat.  `iwae = TRUE` adds an importance-weighted estimate of each
#' log evidence, a tighter bound, with its Monte Carlo standard error.
#'
#' The fits must model the same data: the same response, number of
#' observations, exposure and offset (and, for binomial models, trials).
#' Evidences of gaussian (density) and count (probability) models of the same
#' numbers are not comparable and are refused.
#'
#' @param ... Fitted models (`vbfit`, or any object with an ELBO and a
#'   response `y`), ideally named (`compare_models(small = f1, big = f2)`);
#'   unnamed fits are named by their expressions.  A single list of fits is
#'   also accepted.
#' @param prior_prob Optional prior model probabilities, one per fit (positive;
#'   normalised to sum to one).  Equal by default.
#' @param iwae If `TRUE`, add the importance-weighted evidence estimate and its
#'   standard error for each fit from `vb_diagnose()` (when available).
#' @return A data frame of class `vb_comparison`, one row per model, with
#'   columns `model`, `npar` (number of coefficients), `elbo`, `loglik`
#'   (E_q log p(y | theta)), `kl` (KL(q || prior)), `delta` (ELBO minus the
#'   best ELBO), `prob` (approximate posterior model probability), `prior_prob`
#'   and, with `iwae = TRUE`, `iwae`, `iwae_se` and `delta_iwae`.
#' @seealso [elbo()], [bms()] for a group of subjects.
#' @examples
#' small <- vb(mpg ~ wt, data = mtcars)
#' big <- vb(mpg ~ wt + hp + qsec, data = mtcars)
#' compare_models(small = small, big = big)
#' anova(small, big)
#' @export
compare_models <- function(..., prior_prob = NULL, iwae = FALSE) {
  fits <- list(...)
  nms <- names(fits)
  exprs <- vapply(as.list(substitute(list(...)))[-1L],
                  function(e) paste(deparse(e, width.cutoff = 60L), collapse = ""), character(1))
  if (length(fits) == 1L && is.list(fits[[1L]]) && !is_fit(fits[[1L]])) {
    fits <- fits[[1L]]
    nms <- names(fits)
    exprs <- paste0("model", seq_along(fits))
  }
  if (is.null(nms)) nms <- rep("", length(fits))
  nms[nms == ""] <- exprs[nms == ""]
  names(fits) <- nms
  compare_fits(fits, prior_prob, iwae)
}

#' @rdname compare_models
#' @param object A `vbfit`.
#' @importFrom stats anova
#' @export
anova.vbfit <- function(object, ..., prior_prob = NULL, iwae = FALSE) {
  exprs <- vapply(as.list(substitute(list(object, ...)))[-1L],
                  function(e) paste(deparse(e, width.cutoff = 60L), collapse = ""), character(1))
  fits <- c(list(object), list(...))
  nms <- names(fits)
  if (is.null(nms)) nms <- rep("", length(fits))
  nms[nms == ""] <- exprs[nms == ""]
  names(fits) <- nms
  compare_fits(fits, prior_prob, iwae)
}

# exact [[ ]], not $: a list of fits named "elbo_a", ... is not itself a fit
is_fit <- function(x) inherits(x, "vbfit") || (is.list(x) && !is.null(x[["elbo"]]))

compare_fits <- function(fits, prior_prob, iwae) {
  M <- length(fits)
  if (M < 2L) stop("compare_models(): give at least two fitted models to compare.", call. = FALSE)
  nms <- names(fits)
  if (anyDuplicated(nms))
    stop("compare_models(): the models need distinct names; name them, as in compare_models(a = fit1, b = fit2).",
         call. = FALSE)
  for (i in seq_len(M)) {
    if (!is_fit(fits[[i]]))
      stop(sprintf("compare_models(): '%s' is not a fitted model with an ELBO.", nms[i]), call. = FALSE)
  }
  check_same_data(fits)
  if (!is.logical(iwae) || length(iwae) != 1L || is.na(iwae))
    stop("compare_models(): 'iwae' must be TRUE or FALSE.", call. = FALSE)
  if (is.null(prior_prob)) prior_prob <- rep(1 / M, M)
  if (!is.numeric(prior_prob) || length(prior_prob) != M || any(!is.finite(prior_prob)) || any(prior_prob <= 0))
    stop(sprintf("compare_models(): 'prior_prob' must be %d positive numbers, one per model.", M), call. = FALSE)
  prior_prob <- prior_prob / sum(prior_prob)

  terms <- t(vapply(fits, function(f) {
    e <- elbo(f, terms = TRUE)
    if (length(e) == 3L) unname(e) else c(unname(e[1L]), NA_real_, NA_real_)
  }, numeric(3)))
  el <- terms[, 1]
  if (any(!is.finite(el)))
    stop(sprintf("compare_models(): the ELBO of %s is not finite.", paste(nms[!is.finite(el)], collapse = ", ")),
         call. = FALSE)
  npar <- vapply(fits, function(f) if (is.null(f$coefficients)) NA_integer_ else length(f$coefficients),
                 integer(1))
  out <- data.frame(model = nms, npar = npar, elbo = el, loglik = terms[, 2], kl = terms[, 3],
                    delta = el - max(el), prob = softmax(el + log(prior_prob)),
                    prior_prob = prior_prob, row.names = NULL, stringsAsFactors = FALSE)
  if (iwae) {
    diag_fun <- find_diagnose()
    if (is.null(diag_fun))
      stop("compare_models(): iwae = TRUE needs vb_diagnose(), which this version of vbayes lacks.", call. = FALSE)
    iw <- t(vapply(fits, function(f) {
      d <- diag_fun(f)
      c(as.numeric(d$iwae)[1L], as.numeric(d$iwae_se)[1L])
    }, numeric(2)))
    out$iwae <- iw[, 1]
    out$iwae_se <- iw[, 2]
    out$delta_iwae <- iw[, 1] - max(iw[, 1])
  }
  class(out) <- c("vb_comparison", "data.frame")
  out
}

# vb_diagnose() is written separately; use it only when the package has it.
find_diagnose <- function() {
  get0("vb_diagnose", envir = topenv(environment(compare_fits)), mode = "function", inherits = FALSE)
}

# Refuse fits that do not model the same numbers.
check_same_data <- function(fits) {
  nms <- names(fits)
  ys <- lapply(fits, function(f) f$y)
  miss <- vapply(ys, is.null, logical(1))
  if (any(miss))
    stop(sprintf("compare_models(): cannot check that the fits share their data: %s carr%s no response (refit with y = TRUE).",
                 paste(nms[miss], collapse = ", "), if (sum(miss) == 1L) "ies" else "y"), call. = FALSE)
  differ <- function(a, b) {
    if (is.null(a) && is.null(b)) return(FALSE)
    if (is.null(a) || is.null(b)) return(TRUE)
    a <- as.numeric(a); b <- as.numeric(b)
    length(a) != length(b) || !isTRUE(all.equal(a, b, tolerance = 1e-10, check.attributes = FALSE))
  }
  ref <- fits[[1L]]
  fam <- function(f) if (is.null(f$family)) NA_character_ else f$family$family
  for (i in seq_along(fits)[-1L]) {
    f <- fits[[i]]
    what <- sprintf("'%s' and '%s'", nms[1L], nms[i])
    if (length(ys[[i]]) != length(ys[[1L]]))
      stop(sprintf("compare_models(): %s were fit to different numbers of observations (%d and %d); evidences of different data cannot be compared. Fit every model to the same rows (check subset and missing values).",
                   what, length(ys[[1L]]), length(ys[[i]])), call. = FALSE)
    if (differ(ys[[1L]], ys[[i]]))
      stop(sprintf("compare_models(): %s were fit to different responses; evidences of different data cannot be compared.",
                   what), call. = FALSE)
    fa <- c(fam(ref), fam(f))
    if (!anyNA(fa) && fa[1] != fa[2] && "gaussian" %in% fa)
      stop(sprintf("compare_models(): %s use the %s and %s families; a density and a probability mass of the same numbers are not comparable evidences.",
                   what, fa[1], fa[2]), call. = FALSE)
    if ("binomial" %in% fa && differ(ref$prior.weights, f$prior.weights))
      stop(sprintf("compare_models(): %s have different binomial trials (weights), so different data.", what),
           call. = FALSE)
    if (!is.null(ref$exposure) && !is.null(f$exposure) && differ(ref$exposure, f$exposure))
      stop(sprintf("compare_models(): %s were fit with different exposures (bin widths); the counts then measure different things. Use the same 'exposure' in every model.",
                   what), call. = FALSE)
    if (differ(ref$offset, f$offset))
      stop(sprintf("compare_models(): %s were fit with different offsets (log exposure included); compare models of the same data with the same offset and exposure.",
                   what), call. = FALSE)
  }
  invisible(TRUE)
}

#' @export
print.vb_comparison <- function(x, digits = 3L, ...) {
  cat("Model comparison by the evidence lower bound (ELBO)\n\n")
  tab <- as.data.frame(unclass(x), stringsAsFactors = FALSE)
  rownames(tab) <- tab$model
  tab$model <- NULL
  show <- intersect(c("npar", "elbo", "loglik", "kl", "delta", "prob", "iwae", "iwae_se", "delta_iwae"),
                    names(tab))
  if (length(unique(tab$prior_prob)) > 1L) show <- c(show, "prior_prob")
  tab <- tab[show]
  num <- vapply(tab, is.double, logical(1))
  tab[num] <- lapply(tab[num], function(v) round(v, digits))
  print(tab)
  cat("\nloglik = E_q[log p(y | theta)] (accuracy), kl = KL(q || prior) (complexity),\n",
      "elbo = loglik - kl; delta = elbo - best elbo; prob = softmax(elbo + log prior).\n", sep = "")
  best <- which.max(x$elbo)
  o <- order(x$elbo, decreasing = TRUE)
  runner <- o[2L]
  cat(sprintf("\nPreferred: %s (ELBO higher by %.*f than %s, the next best).\n",
              x$model[best], digits, x$elbo[best] - x$elbo[runner], x$model[runner]))
  if (!is.null(x$iwae)) {
    bi <- which.max(x$iwae)
    cat(sprintf("The importance-weighted evidence prefers %s.\n", x$model[bi]))
  }
  cat("Each ELBO is a lower bound on its model's log evidence; ELBO differences\n",
      "approximate log Bayes factors but neither equal nor bound them, because the\n",
      "gaps KL(q || posterior) differ between models.\n", sep = "")
  invisible(x)
}
