/* Tone analysis for the sound guests' capture (snd.S, hda.S): include it where the
 * includer has defined PERIOD (bytes of one period of mono S16) and a .long `hstate`
 * (the hysteresis state, 0 at start). */
	.text
/* analyse: zero crossings in the period at %esi into %eax, with hysteresis (a crossing
 * is a swing from above +1000 to below -1000 or back, so noise around zero does not
 * count; the state carries across periods), and the largest magnitude into %edx. */
analyse:
	push %ecx
	push %ebx
	push %edi
	push %ebp
	xor %eax, %eax
	xor %edx, %edx
	mov hstate, %ebx		/* 0 unknown, 1 above, 2 below */
	xor %ecx, %ecx
1:	movswl (%esi,%ecx,2), %edi
	mov %edi, %ebp
	test %ebp, %ebp
	jns 2f
	neg %ebp
2:	cmp %edx, %ebp
	jbe 3f
	mov %ebp, %edx
3:	cmp $1000, %edi
	jle 4f
	cmp $2, %ebx			/* above now */
	jne 5f
	inc %eax
5:	mov $1, %ebx
	jmp 6f
4:	cmp $-1000, %edi
	jge 6f
	cmp $1, %ebx			/* below now */
	jne 7f
	inc %eax
7:	mov $2, %ebx
6:	inc %ecx
	cmp $(PERIOD / 2), %ecx
	jb 1b
	mov %ebx, hstate
	pop %ebp
	pop %edi
	pop %ebx
	pop %ecx
	ret
