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
#' numbers are not comparable and are refused.  Fits of [vb_lds()] compare
#' as well, for instance models of one recording with different latent
#' dimensions: the check then covers every trial's time bins x units matrix
#' and the exposures.  Fits of a log density ([vb_density()]) carry no data,
#' so that they describe the same data cannot be checked; they are compared
#' with a note saying so.
#'
#' @param ... Fitted models (any `vb_posterior` from [vb()], [vb_lds()] or
#'   [vb_density()], or a list with an `elbo` element and a response `y`),
#'   ideally named (`compare_models(small = f1, big = f2)`);
#'   unnamed fits are named by their expressions.  A single list of fits is
#'   also accepted.
#' @param prior_prob Optional prior model probabilities, one per fit (positive;
#'   normalised to sum to one).  Equal by default.
#' @param iwae If `TRUE`, add for each fit the tightest importance-weighted
#'   bound [vb_diagnose()] gives with its defaults: L_K at its largest K
#'   (K = 100 from S = 4000 draws from q), with its Monte Carlo standard
#'   error.  Draws use the random number generator (`set.seed()` reproduces
#'   them).
#' @return A data frame of class `vb_comparison`, one row per model, with
#'   columns `model`, `npar` (number of coefficients), `elbo`, `loglik`
#'   (E_q log p(y | theta)), `kl` (KL(q || prior)), `delta` (ELBO minus the
#'   best ELBO), `prob` (approximate posterior model probability), `prior_prob`
#'   and, with `iwae = TRUE`, `iwae`, `iwae_se` and `delta_iwae` (the group
#'   size K is in `attr(, "iwae_K")`).
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
is_fit <- function(x) inherits(x, "vb_posterior") || (is.list(x) && !is.null(x[["elbo"]]))

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
  unchecked <- check_same_data(fits)
  if (!is.logical(iwae) || length(iwae) != 1L || is.na(iwae))
    stop("compare_models(): 'iwae' must be TRUE or FALSE.", call. = FALSE)
  if (is.null(prior_prob)) prior_prob <- rep(1 / M, M)
  if (!is.numeric(prior_prob) || length(prior_prob) != M || any(!is.finite(prior_prob)) || any(prior_prob <= 0))
    stop(sprintf("compare_models(): 'prior_prob' must be %d positive numbers, one per model.", M), call. = FALSE)
  prior_prob <- prior_prob / sum(prior_prob)

  terms <- t(vapply(fits, function(f) {
    e <- elbo(f, terms = TRUE)
    if (all(c("elbo", "loglik", "kl") %in% names(e))) unname(e[c("elbo", "loglik", "kl")])
    else c(unname(e[1L]), NA_real_, NA_real_)
  }, numeric(3)))
  el <- terms[, 1]
  if (any(!is.finite(el)))
    stop(sprintf("compare_models(): the ELBO of %s is not finite.", paste(nms[!is.finite(el)], collapse = ", ")),
         call. = FALSE)
  npar <- vapply(fits, function(f) {
    cf <- f[["coefficients"]]
    if (is.null(cf)) NA_integer_ else length(cf)
  }, integer(1))
  out <- data.frame(model = nms, npar = npar, elbo = el, loglik = terms[, 2], kl = terms[, 3],
                    delta = el - max(el), prob = softmax(el + log(prior_prob)),
                    prior_prob = prior_prob, row.names = NULL, stringsAsFactors = FALSE)
  if (iwae) {
    # the tightest bound vb_diagnose() gives: L_K at its largest K
    iw <- t(vapply(nms, function(nm) {
      d <- tryCatch(vb_diagnose(fits[[nm]]), error = function(e)
        stop(sprintf("compare_models(): iwae = TRUE needs vb_diagnose() on '%s', which failed: %s",
                     nm, conditionMessage(e)), call. = FALSE))
      k <- which.max(d$K)
      c(d$iwae[k], d$iwae_se[k], d$K[k])
    }, numeric(3)))
    out$iwae <- iw[, 1]
    out$iwae_se <- iw[, 2]
    out$delta_iwae <- iw[, 1] - max(iw[, 1])
    attr(out, "iwae_K") <- unname(iw[, 3])
  }
  attr(out, "unchecked") <- unchecked
  class(out) <- c("vb_comparison", "data.frame")
  out
}

# The data a fit models, flattened: y (numbers and shape), exposure,
# offset, prior weights and family.  GLM fits keep y as a vector, vb_lds()
# fits as a list of (time bins x units) matrices, one per trial.
fit_data <- function(f) {
  y <- f[["y"]]
  shape <- if (is.list(y) && !is.data.frame(y)) lapply(y, dim) else list(NROW(y), NCOL(y))
  flat <- function(v) if (is.null(v)) NULL else as.numeric(unlist(v, use.names = FALSE))
  fam <- f[["family"]]
  list(y = flat(y), shape = shape, exposure = flat(f[["exposure"]]), offset = flat(f[["offset"]]),
       weights = flat(f[["prior.weights"]]),
       family = if (is.null(fam)) NA_character_ else fam$family)
}

# Refuse fits that do not model the same numbers.  Fits of a log density
# (vb_density(): no data by nature) cannot be checked; their names are
# returned so that print() can say so.  Fits from vb() or vb_lds() must carry
# their response.
check_same_data <- function(fits) {
  nms <- names(fits)
  has_data <- vapply(fits, function(f) !is.null(f[["y"]]), logical(1))
  needs_data <- vapply(fits, function(f) inherits(f, c("vbfit", "vblds")), logical(1))
  miss <- needs_data & !has_data
  if (any(miss))
    stop(sprintf("compare_models(): cannot check that the fits share their data: %s carr%s no response (refit with y = TRUE).",
                 paste(nms[miss], collapse = ", "), if (sum(miss) == 1L) "ies" else "y"), call. = FALSE)
  differ <- function(a, b) {
    if (is.null(a) && is.null(b)) return(FALSE)
    if (is.null(a) || is.null(b)) return(TRUE)
    length(a) != length(b) || !isTRUE(all.equal(a, b, tolerance = 1e-10, check.attributes = FALSE))
  }
  idx <- which(has_data)
  if (length(idx) >= 2L) {
    dat <- lapply(fits[idx], fit_data)
    ref <- dat[[1L]]; r <- nms[idx[1L]]
    for (j in seq_along(idx)[-1L]) {
      f <- dat[[j]]
      what <- sprintf("'%s' and '%s'", r, nms[idx[j]])
      if (length(f$y) != length(ref$y))
        stop(sprintf("compare_models(): %s were fit to different numbers of observations (%d and %d); evidences of different data cannot be compared. Fit every model to the same rows (check subset and missing values).",
                     what, length(ref$y), length(f$y)), call. = FALSE)
      if (!identical(f$shape, ref$shape))
        stop(sprintf("compare_models(): %s were fit to differently shaped data (trials, time bins or units differ); evidences of different data cannot be compared.",
                     what), call. = FALSE)
      if (differ(ref$y, f$y))
        stop(sprintf("compare_models(): %s were fit to different responses; evidences of different data cannot be compared.",
                     what), call. = FALSE)
      fa <- c(ref$family, f$family)
      if (!anyNA(fa) && fa[1] != fa[2] && "gaussian" %in% fa)
        stop(sprintf("compare_models(): %s use the %s and %s families; a density and a probability mass of the same numbers are not comparable evidences.",
                     what, fa[1], fa[2]), call. = FALSE)
      if ("binomial" %in% fa && differ(ref$weights, f$weights))
        stop(sprintf("compare_models(): %s have different binomial trials (weights), so different data.", what),
             call. = FALSE)
      if (!is.null(ref$exposure) && !is.null(f$exposure) && differ(ref$exposure, f$exposure))
        stop(sprintf("compare_models(): %s were fit with different exposures (bin widths); the counts then measure different things. Use the same 'exposure' in every model.",
                     what), call. = FALSE)
      if (differ(ref$offset, f$offset))
        stop(sprintf("compare_models(): %s were fit with different offsets (log exposure included); compare models of the same data with the same offset and exposure.",
                     what), call. = FALSE)
    }
  }
  nms[!has_data]
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
  if (!is.null(x[["iwae"]])) {
    bi <- which.max(x$iwae)
    K <- attr(x, "iwae_K")
    cat(sprintf("The importance-weighted evidence%s prefers %s.\n",
                if (length(K) && all(K == K[1L])) sprintf(" (L_K, K = %d)", K[1L]) else "", x$model[bi]))
  }
  cat("Each ELBO is a lower bound on its model's log evidence; ELBO differences\n",
      "approximate log Bayes factors but neither equal nor bound them, because the\n",
      "gaps KL(q || posterior) differ between models.\n", sep = "")
  un <- attr(x, "unchecked")
  if (length(un))
    cat(sprintf("Note: %s carr%s no data (fits of a log density), so that every model describes the same data was not checked.\n",
                paste(un, collapse = ", "), if (length(un) == 1L) "ies" else "y"))
  invisible(x)
}
